"""Limits the extra (ktamv.py) and the helper share: the one source of each.

ktamv.py runs inside Klippy and may not import the helper package (it needs
numpy), so it loads this file by its path: keep it free of imports.
"""

# The plausible scale of a nozzle camera, mm per pixel (calibration fits and
# a saved camera_matrix outside it are refused).
MIN_MM_PER_PX = 0.001
MAX_MM_PER_PX = 0.2
# Most commanded positions one request carries in machine.moves.
MAX_MOVES = 100
# camera_timeout bounds, seconds (ktamv.py's option and configure's param).
MIN_CAMERA_TIMEOUT = 0.1
MAX_CAMERA_TIMEOUT = 30.0
# The bore shift that shows a move has reached the picture: the helper
# measures the camera latency from the first frame shifted this much, px.
LATENCY_SHIFT_PX = 2.0
