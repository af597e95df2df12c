# SPDX-License-Identifier: GPL-3.0-or-later
"""CSD for Blender: text-to-texture, text-to-3D and text edits with Classifier Score Distillation.

The heavy work runs in a separate engine process (``python -m engine run JOB_DIR``) with
its own Python environment; this extension writes job folders, follows the engine, and
brings its results back as images, materials and objects. See docs/job-protocol.md.

Blender-specific modules are imported in register(), so the plain-Python half
(``csd_blender.exchange``) can be imported and tested without Blender.
"""


def _modules():
    from . import engine_setup, operators, panel, preferences, properties
    from .blender import handlers, preview

    return (preferences, properties, operators, engine_setup, panel, preview, handlers)


def register():
    for module in _modules():
        module.register()


def unregister():
    for module in reversed(_modules()):
        module.unregister()
