"""A stand-in for Klipper's IDEX ``dual_carriage`` object, for tests.

Linked into Klippy's extras as ``dual_carriage.py`` by
test_example_macros.py; the test printer is corexy, whose kinematics never
read ``[dual_carriage]``, so this module is what that section loads. It has
what kTAMV and the example macros read: the ``dual_carriage`` status of
Klipper v0.11 (``carriage_0``/``carriage_1``: ``PRIMARY`` or ``INACTIVE``)
and ``SET_DUAL_CARRIAGE CARRIAGE=<0|1>``, which makes that carriage PRIMARY.
It moves nothing: the simulated camera only needs the active carriage's name.
"""


class FakeDualCarriage:
    def __init__(self, config):
        self.printer = config.get_printer()
        self.modes = ["PRIMARY", "INACTIVE"]
        self.printer.lookup_object("gcode").register_command(
            "SET_DUAL_CARRIAGE", self.cmd_SET_DUAL_CARRIAGE)

    def cmd_SET_DUAL_CARRIAGE(self, gcmd):
        carriage = gcmd.get_int("CARRIAGE", minval=0, maxval=1)
        self.modes = ["INACTIVE", "INACTIVE"]
        self.modes[carriage] = "PRIMARY"

    def get_status(self, eventtime=None):
        return {"carriage_%d" % i: mode for i, mode in enumerate(self.modes)}


def load_config(config):
    return FakeDualCarriage(config)
