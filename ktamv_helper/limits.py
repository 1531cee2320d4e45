"""Limits the extra (ktamv.py) and the helper share: the one source of each.

ktamv.py runs inside Klippy and may not import the helper package (it needs
numpy), so it loads this file by its path: keep it free of imports.
"""

# The plausible scale of a nozzle camera, mm per pixel (calibration fits and
# a saved camera_matrix outside it are refused). A microscope-zoom camera
# (Axiscope's) shows a 0.4 mm bore ~490 px across: ~0.0008 mm/px.
MIN_MM_PER_PX = 0.0005
MAX_MM_PER_PX = 0.2
# Most commanded positions one request carries in machine.moves.
MAX_MOVES = 100
# camera_timeout bounds, seconds (ktamv.py's option and configure's param).
MIN_CAMERA_TIMEOUT = 0.1
MAX_CAMERA_TIMEOUT = 30.0
# The smallest bore radius searched unless min_radius says otherwise, px
# (ktamv.py's option default, configure's and the detect command's). Down
# to 2 px specks of texture in real photographs measure as round as a bore
# (8 of 80 non-nozzle photos gave one at 2 px, 1 at 3 px), so a camera
# whose bore is smaller has to say so.
DEFAULT_MIN_RADIUS = 3.0
# The bore shift that shows a move has reached the picture: the helper
# measures the camera latency from the first frame shifted this much, px.
LATENCY_SHIFT_PX = 2.0
