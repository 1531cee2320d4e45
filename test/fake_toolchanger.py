"""A stand-in for viesturz/klipper-toolchanger's ``[toolchanger]``, for tests.

Linked into Klippy's extras as ``toolchanger.py`` by test_example_macros.py.
It offers only what examples/toolchanger_macros.cfg uses, as that project
documents it: the ``toolchanger`` status (``tool``, ``tool_number``,
``tool_numbers``, ``tool_names``), one ``tool Tn`` object per tool with its
status (``name``, ``tool_number``, ``extruder``, ``gcode_x_offset``,
``gcode_y_offset``, ``active``), ``T<n>`` commands that select a tool and set
its G-code offset, and ``SET_TOOL_PARAMETER`` / ``SAVE_TOOL_PARAMETER``
(stage the value for SAVE_CONFIG in the tool's section).

Config::

    [toolchanger]
    tool_count: 3
    reference_offset: 0.1, -0.2   # gcode_x/y_offset of every tool at start
"""

import ast


class FakeTool:
    def __init__(self, number, offset):
        self.name = "tool T%d" % (number,)
        self.tool_number = number
        self.offset = list(offset)
        self.params = {}
        self.active = False

    def get_status(self, eventtime):
        return {"name": self.name, "tool_number": self.tool_number,
                "extruder": None, "active": self.active,
                "gcode_x_offset": self.offset[0],
                "gcode_y_offset": self.offset[1], "gcode_z_offset": 0.0}


class FakeToolchanger:
    def __init__(self, config):
        self.printer = config.get_printer()
        count = config.getint("tool_count", 2, minval=1)
        offset = config.getfloatlist("reference_offset", (0.0, 0.0), count=2)
        self.tools = [FakeTool(n, offset) for n in range(count)]
        self.active = None
        gcode = self.printer.lookup_object("gcode")
        for tool in self.tools:
            self.printer.add_object(tool.name, tool)
            gcode.register_command("T%d" % (tool.tool_number,),
                                   self._selector(tool))
        gcode.register_command("SET_TOOL_PARAMETER", self.cmd_SET_TOOL_PARAMETER)
        gcode.register_command("SAVE_TOOL_PARAMETER", self.cmd_SAVE_TOOL_PARAMETER)

    def _selector(self, tool):
        def select(gcmd):
            if self.active is not None:
                self.active.active = False
            self.active = tool
            tool.active = True
            gcode = self.printer.lookup_object("gcode")
            gcode.run_script_from_command("SET_GCODE_OFFSET X=%f Y=%f"
                                          % tuple(tool.offset))
        return select

    def _tool(self, gcmd):
        number = gcmd.get_int("T")
        for tool in self.tools:
            if tool.tool_number == number:
                return tool
        raise gcmd.error("T%d not found" % (number,))

    def cmd_SET_TOOL_PARAMETER(self, gcmd):
        tool = self._tool(gcmd)
        tool.params[gcmd.get("PARAMETER")] = ast.literal_eval(gcmd.get("VALUE"))

    def cmd_SAVE_TOOL_PARAMETER(self, gcmd):
        tool = self._tool(gcmd)
        name = gcmd.get("PARAMETER")
        if name not in tool.params:
            raise gcmd.error("Tool does not have parameter %s" % (name,))
        self.printer.lookup_object("configfile").set(tool.name, name,
                                                     tool.params[name])

    def get_status(self, eventtime):
        return {"status": "ready",
                "tool": self.active.name if self.active else None,
                "tool_number": self.active.tool_number if self.active else -1,
                "tool_numbers": [t.tool_number for t in self.tools],
                "tool_names": [t.name for t in self.tools]}


def load_config(config):
    return FakeToolchanger(config)
