"""The extension builds, passes Blender's validator, installs with Blender's CLI, enables, and draws."""

from __future__ import annotations

import zipfile

from conftest import ADDON_MODULE


def test_zip_contents(built_zip):
    names = set(zipfile.ZipFile(built_zip).namelist())
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert "exchange/queue.py" in names and "blender/result_import.py" in names
    assert "engine_src/engine/__main__.py" in names and "engine_src/engine/cli.py" in names
    assert "requirements-engine.txt" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    source = zipfile.ZipFile(built_zip).read("__init__.py").decode()
    assert "bl_info" not in source


def test_validates_installs_and_enables(extension, bpy):
    info = extension._test_info
    assert info["validate"].returncode == 0, info["validate"].stdout + info["validate"].stderr
    assert info["install"].returncode == 0, info["install"].stdout + info["install"].stderr
    assert info["enable"] == {'FINISHED'}
    assert ADDON_MODULE in bpy.context.preferences.addons
    for name in ("CSD_PT_main", "CSD_PT_edit", "CSD_PT_advanced"):
        assert hasattr(bpy.types, name)
    for op in ("texture_selected", "generate_asset", "apply_edit", "cancel", "setup_engine", "check_engine"):
        assert hasattr(bpy.ops.csd, op)
    assert hasattr(bpy.types.Scene, "csd")


def test_user_folder_is_the_extensions(addon):
    from importlib import import_module

    prefs = import_module(ADDON_MODULE + ".preferences")
    jobs = prefs.jobs_root()
    assert ".user" in jobs.parts and "csd_blender" in jobs.parts


def test_controlnet_preferences_default_to_the_models_family(addon):
    # A fixed SD 1.5 ControlNet would be sent with every model and refused for SDXL and SD 2.x.
    from importlib import import_module

    prefs = import_module(ADDON_MODULE + ".preferences").get()
    assert prefs.controlnet_depth == "" and prefs.controlnet_canny == ""


class Recorder:
    """A stand-in UILayout that checks every property and operator the panels name exists."""

    def __init__(self, bpy, log):
        self.bpy, self.log = bpy, log
        self.enabled = self.alert = True
        self.scale_y = 1.0
        self.use_property_split = self.use_property_decorate = False

    def _child(self, *args, **kwargs):
        return Recorder(self.bpy, self.log)

    row = column = box = split = _child

    def label(self, text="", **kwargs):
        self.log.append(("label", text))

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, name
        self.log.append(("prop", name))

    def operator(self, idname, **kwargs):
        module, name = idname.split(".")
        assert hasattr(getattr(self.bpy.ops, module), name), idname
        self.log.append(("operator", idname))
        return type("Props", (), {})()

    def progress(self, factor=0.0, type='BAR', text=""):
        assert 0.0 <= factor <= 1.0
        self.log.append(("progress", text))

    def template_icon(self, icon_value=0, scale=1.0):
        self.log.append(("icon", icon_value))


def draw(bpy, panel_cls, context):
    log = []
    panel = type("P", (), {"layout": Recorder(bpy, log)})()
    panel_cls.draw(panel, context)
    return log


def test_panels_draw(addon, bpy):
    from importlib import import_module

    panel = import_module(ADDON_MODULE + ".panel")
    log = draw(bpy, panel.CSD_PT_main, bpy.context)
    assert ("operator", "csd.texture_selected") in log and ("operator", "csd.generate_asset") in log
    assert ("prop", "prompt") in log and ("prop", "quality") in log
    log = draw(bpy, panel.CSD_PT_edit, bpy.context)
    assert ("operator", "csd.apply_edit") in log and ("prop", "target_prompt") in log
    log = draw(bpy, panel.CSD_PT_advanced, bpy.context)
    assert ("prop", "guidance_mode") in log and ("prop", "texture_size") in log
    prefs = import_module(ADDON_MODULE + ".preferences")

    class Proxy:
        def __init__(self, real, layout):
            self.__dict__.update(_real=real, layout=layout)

        def __getattr__(self, name):
            return getattr(self._real, name)

    plog = []
    prefs.CSD_AddonPreferences.draw(Proxy(prefs.get(), Recorder(bpy, plog)), bpy.context)
    assert ("prop", "engine_python") in plog and ("operator", "csd.check_engine") in plog
    assert any("Online access is off" in text for kind, text in plog if kind == "label")


def test_panel_shows_progress_and_errors(addon, bpy):
    from importlib import import_module

    panel = import_module(ADDON_MODULE + ".panel")
    queue = import_module(ADDON_MODULE + ".exchange.queue")
    queue.QUEUE.last_report = queue.Report("ERROR", "The engine ran out of memory.", "Choose Draft.", "")
    log = draw(bpy, panel.CSD_PT_main, bpy.context)
    labels = " ".join(text for kind, text in log if kind == "label")
    assert "out of memory" in labels and "Choose Draft." in labels
    assert ("operator", "csd.dismiss_report") in log
