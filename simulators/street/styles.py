"""The looks a street scene is drawn in: base palettes, sizes and light per `style`.

"default" holds the simulator's original values (its frames keep their bytes). "camvid"
was tuned against CamVid's train/ frames with benchmarks/street_stats.py (class
frequency, mean row and mean colour per class): Cambridge in winter under a bright,
mostly overcast sky that the camera over-exposes, so the street below is dark; brick and
stone facades, bare grey trees among green ones, people in dark clothes, and "sign"
pixels that are mostly shop boards and traffic lights rather than round road signs.
Only describe draws from these; the renderer reads what describe wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Look:
    """Base colours (day light, before jitter) and size ranges of one style."""

    building_colours: tuple[RGB, ...]
    window_colour: RGB
    road_grey: tuple[int, int]  # integers drawn in [low, high)
    sidewalk_colour: RGB
    sidewalk_width: tuple[float, float]  # metres, each side
    car_colours: tuple[RGB, ...]
    shirt_colours: tuple[RGB, ...]
    pants_colours: tuple[RGB, ...]
    skin_colours: tuple[RGB, ...]
    fence_colours: tuple[RGB, ...]
    fence_length: tuple[float, float]  # metres
    fence_height: tuple[float, float]
    tree_colour: RGB  # default: one green, jittered
    tree_colours: tuple[RGB, ...] | None  # a palette instead (picked, then jittered)
    bare_trees: float  # share of trees drawn leafless (a twiggy crown)
    tree_radius: tuple[float, float]
    trunk: tuple[float, float]
    pole_colour: RGB
    sign_shapes: tuple[str, ...]
    board_colours: tuple[RGB, ...]  # shop boards / banners (shape "board")
    sky: dict[str, tuple[RGB, RGB]]  # per time of day: (zenith, horizon)
    overcast: float  # share of frames with the overcast sky below instead of `sky`
    overcast_sky: dict[str, tuple[RGB, RGB]]
    sun: tuple[float, float]  # ambient light multiplier, drawn uniformly


DEFAULT = Look(
    building_colours=((190, 170, 140), (150, 80, 60), (160, 160, 165), (215, 210, 195), (120, 95, 75),
                      (200, 185, 160)),
    window_colour=(60, 75, 95),
    road_grey=(70, 100),
    sidewalk_colour=(165, 160, 150),
    sidewalk_width=(2.0, 5.0),
    car_colours=((200, 200, 205), (30, 30, 35), (150, 20, 25), (40, 60, 120), (120, 125, 130), (230, 230, 225),
                 (60, 90, 60), (190, 150, 40)),
    shirt_colours=((40, 50, 90), (170, 40, 40), (220, 220, 210), (60, 60, 60), (50, 110, 70), (200, 150, 40)),
    pants_colours=((30, 35, 60), (40, 40, 40), (90, 80, 70), (60, 70, 90)),
    skin_colours=((230, 190, 160), (190, 140, 110), (120, 80, 60), (210, 170, 130)),
    fence_colours=((90, 100, 95), (130, 100, 70), (170, 170, 170)),
    fence_length=(6.0, 30.0),
    fence_height=(0.9, 1.3),
    tree_colour=(60, 110, 45),
    tree_colours=None,
    bare_trees=0.0,
    tree_radius=(1.2, 2.4),
    trunk=(2.0, 3.2),
    pole_colour=(120, 122, 125),
    sign_shapes=("circle", "triangle", "octagon", "rect"),
    board_colours=(),
    sky={"day": ((80, 135, 215), (185, 210, 235)), "dusk": ((60, 55, 115), (245, 150, 90)),
         "night": ((4, 6, 18), (22, 26, 45))},
    overcast=0.0,
    overcast_sky={},
    sun=(0.9, 1.1),
)

CAMVID = Look(
    building_colours=((150, 125, 115), (130, 100, 92), (162, 162, 160), (198, 198, 195), (118, 116, 118),
                      (170, 163, 152), (138, 140, 146)),
    window_colour=(40, 45, 55),
    road_grey=(95, 120),
    sidewalk_colour=(100, 99, 97),
    sidewalk_width=(1.5, 4.0),
    car_colours=((205, 208, 215), (50, 52, 58), (150, 45, 50), (60, 78, 125), (140, 144, 152), (230, 230, 230),
                 (70, 95, 78), (100, 102, 110)),
    shirt_colours=((30, 30, 35), (45, 45, 55), (60, 50, 45), (25, 32, 50), (95, 35, 35), (120, 115, 110)),
    pants_colours=((25, 25, 30), (35, 35, 40), (50, 45, 40), (35, 40, 60)),
    skin_colours=((200, 165, 140), (160, 120, 95), (100, 70, 55), (185, 150, 120)),
    fence_colours=((70, 76, 72), (95, 80, 62), (112, 112, 110)),
    fence_length=(10.0, 40.0),
    fence_height=(1.1, 2.0),
    tree_colour=(60, 110, 45),
    tree_colours=((95, 115, 75), (125, 132, 110), (80, 100, 65)),
    bare_trees=0.8,
    tree_radius=(1.8, 4.0),
    trunk=(1.8, 3.4),
    pole_colour=(105, 108, 112),
    sign_shapes=("circle", "triangle", "rect", "board", "board", "board", "light", "light"),
    board_colours=((30, 55, 120), (140, 30, 35), (35, 95, 55), (190, 188, 180), (35, 35, 40), (170, 125, 30),
                   (60, 60, 70)),
    sky={"day": ((120, 160, 215), (215, 225, 238)), "dusk": ((70, 65, 115), (235, 160, 110)),
         "night": ((4, 6, 18), (22, 26, 45))},
    overcast=0.85,
    overcast_sky={"day": ((222, 230, 238), (246, 248, 250)), "dusk": ((120, 110, 120), (200, 170, 150)),
                  "night": ((10, 11, 16), (28, 30, 38))},
    sun=(0.55, 0.8),
)

LOOKS = {"default": DEFAULT, "camvid": CAMVID}
