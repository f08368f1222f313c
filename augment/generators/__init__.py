"""Class-conditional and label-map generators, all behind one `Generator` protocol."""
