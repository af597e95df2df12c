"""The panel's settings, stored per scene (saved with the .blend)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from .exchange.protocol import DEFAULT_NEGATIVE_PROMPT
from .exchange.settings import PRESETS


QUALITY_ITEMS = [(key, p.label, f"{p.description}: {p.bundled_steps} steps with the bundled model, "
                  f"{p.texture_steps} with Stable Diffusion, {p.texture_size} px texture")
                 for key, p in PRESETS.items()]
QUALITY_ITEMS.append(('CUSTOM', "Custom", "Choose steps and sizes yourself (Advanced)"))


class CSD_SceneSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", default="",
                           description="What the texture or asset should look like, e.g. 'a wooden chair with carved legs'")
    negative_prompt: StringProperty(name="Negative", default=DEFAULT_NEGATIVE_PROMPT,
                                    description="What to steer away from")
    quality: EnumProperty(name="Quality", items=QUALITY_ITEMS, default='STANDARD',
                          description="Steps and resolutions")
    seed: IntProperty(name="Seed", default=0, min=0, description="Same seed and settings give the same result")
    material: EnumProperty(
        name="Material", default='AUTO',
        description="What Texture Selected and Apply Edit make",
        items=[('AUTO', "Auto", ("PBR with Stable Diffusion models; a base colour alone with the bundled model, "
                                 "which learned no materials. An edit keeps the material of what it edits")),
               ('ALBEDO', "Albedo", "A base colour on a matte material"),
               ('PBR', "PBR", "Base colour, roughness and metallic maps on a Principled BSDF")])

    # Region: only part of the object changes (Texture Selected and Apply Edit); the rest keeps its texture
    region: EnumProperty(
        name="Region", default='WHOLE',
        description="Which faces Texture Selected and Apply Edit change; the others keep their texture texel for texel",
        items=[('WHOLE', "Whole object", "Every face"),
               ('SELECTED', "Selected faces", "The faces selected in Edit Mode"),
               ('VERTEX_GROUP', "Vertex group", "The faces whose vertices all lie in a vertex group (weight above 0.5)"),
               ('MATERIAL', "Material slot", "The faces showing a material")])
    region_vertex_group: StringProperty(name="Vertex group", default="",
                                        description="The vertex group whose faces change")
    region_material: StringProperty(name="Material", default="", description="The material whose faces change")
    region_feather_texels: IntProperty(
        name="Feather", default=8, min=0, max=256, subtype='PIXEL',
        description="Width of the band inside the region's border where new and kept texture blend, in texels")
    region_feather_distance: FloatProperty(
        name="Feather distance", default=0.03, min=0.0, max=1.0, step=1, precision=3,
        description="The same band as a distance over the surface, as a share of the object's largest side "
                    "(the wider of the two is used)")

    # Advanced
    guidance_mode: EnumProperty(
        name="Guidance", default='CSD',
        items=[('CSD', "CSD", "Classifier Score Distillation (the paper's method)"),
               ('SDS', "SDS", "Score Distillation Sampling with classifier-free guidance (baseline)")])
    w1: FloatProperty(name="w1", default=1.0, min=0.0, soft_max=10.0, description="Weight of the prompt's classifier score")
    w2_start: FloatProperty(name="w2 start", default=1.0, min=0.0, soft_max=10.0,
                            description="Weight of the negative prompt at the start")
    w2_end: FloatProperty(name="w2 end", default=0.5, min=0.0, soft_max=10.0,
                          description="Weight of the negative prompt after annealing")
    w2_anneal_steps: IntProperty(name="Anneal steps", default=10000, min=0,
                                 description="Steps over which w2 goes from start to end")
    cfg_scale: FloatProperty(name="CFG scale", default=100.0, min=0.0, soft_max=200.0,
                             description="Classifier-free guidance scale (SDS only)")
    use_controlnet: BoolProperty(name="ControlNet", default=True,
                                 description="Depth and edge ControlNets keep the texture aligned with the shape "
                                             "(Stable Diffusion models only)")
    steps: IntProperty(name="Steps", default=1200, min=1, soft_max=10000)
    render_size: IntProperty(name="Render size", default=512, min=16, max=2048, subtype='PIXEL')
    texture_size: IntProperty(name="Texture size", default=1024, min=16, max=8192, subtype='PIXEL')
    generate_steps: IntProperty(name="Generate steps (NeRF)", default=6000, min=1,
                                description="Steps of Generate Asset's first stage")
    refine_steps: IntProperty(name="Generate steps (refine)", default=3000, min=1,
                              description="Steps of Generate Asset's mesh refinement stage")
    edit_steps: IntProperty(name="Edit steps", default=800, min=1)
    reunwrap: BoolProperty(name="New UV layout", default=False,
                           description="Let the engine unwrap the mesh again instead of using its UV map "
                                       "(a new 'CSD UV' map is added)")
    use_scene_cameras: BoolProperty(name="Scene cameras", default=False,
                                    description="Also optimise the texture as seen from the scene's cameras")

    # Apply Edit
    target_prompt: StringProperty(name="Target", default="",
                                  description="The whole object as it should become, e.g. 'a plush toy of a corgi nurse'")
    edit_prompt: StringProperty(name="Edit away", default="",
                                description="What to move away from, e.g. 'policeman'")
    edit_w1: FloatProperty(name="w1", default=1.0, min=0.0, soft_max=5.0,
                           description="Pull toward the target prompt")
    edit_w2: FloatProperty(name="w2", default=0.5, min=0.0, soft_max=5.0,
                           description="Push away from the edit prompt")
    edit_geometry: BoolProperty(name="Edit geometry", default=False,
                                description="Generated assets only: let the edit change the shape too "
                                            "(makes a new object revision)")

    def as_dict(self) -> dict:
        return {
            "prompt": self.prompt, "negative_prompt": self.negative_prompt, "quality": self.quality,
            "seed": self.seed, "guidance_mode": self.guidance_mode, "w1": self.w1, "w2_start": self.w2_start,
            "w2_end": self.w2_end, "w2_anneal_steps": self.w2_anneal_steps, "cfg_scale": self.cfg_scale,
            "use_controlnet": self.use_controlnet, "steps": self.steps, "render_size": self.render_size,
            "texture_size": self.texture_size, "generate_steps": self.generate_steps,
            "refine_steps": self.refine_steps, "edit_steps": self.edit_steps,
            "reunwrap": self.reunwrap, "use_scene_cameras": self.use_scene_cameras,
            "target_prompt": self.target_prompt, "edit_prompt": self.edit_prompt, "edit_w1": self.edit_w1,
            "edit_w2": self.edit_w2, "edit_geometry": self.edit_geometry,
        }


classes = (CSD_SceneSettings,)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register():
    _register_classes()
    bpy.types.Scene.csd = PointerProperty(type=CSD_SceneSettings)


def unregister():
    del bpy.types.Scene.csd
    _unregister_classes()
