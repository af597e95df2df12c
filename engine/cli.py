"""`python -m engine`: the command line, for people and for the add-on (`run JOB_DIR`).

Job subcommands build a typed job config, validate it, and hand it to `run_pipeline`, which
guarantees a result.json and a documented exit code for every outcome. `models list` and
`models download` tell which models are on this machine and fetch one (only the files the
engine loads); they print JSON lines too, and import no PyTorch.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from .config import (BUNDLED_MODEL, DEFAULT_FIT_STEPS, DEFAULT_NEGATIVE_PROMPT, DEFAULT_PRESERVE_WEIGHT,
                     NERF_STAGE_STEPS, REFINE_STAGE_STEPS, SOURCE_MODEL, EditJobConfig, GenerateJobConfig,
                     GenerateStages, Material, PerpNegMode, TextureJobConfig, config_from_job, load_saved_config,
                     to_dict)
from .errors import BadInputError, Cancelled, EngineError, JobFileError
from .job.progress import CancelToken, ProgressReporter, format_bytes
from .job.paths import inside_folder
from .job.outputs import publish_result_only
from .job.protocol import progress_log_path, read_job, result_document
from .pipelines.tasks import TASKS


def _controlnets(value: str) -> tuple[str, ...]:
    if value in ("none", ""):
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def add_common_arguments(parser: argparse.ArgumentParser, controlnet_auto: str) -> None:
    """The flags `python -m engine texture` and `edit` share, defined once so they stay alike;
    `controlnet_auto` says what --controlnet auto picks. apply_common_arguments reads them."""
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--controlnet", default="auto", type=_controlnets,
                        help=f"depth,canny | depth | canny | none | auto ({controlnet_auto})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of the texture field")
    parser.add_argument("--preview-every", type=int, default=None, help="steps between previews (0: none)")
    parser.add_argument("--allow-download", action="store_true", help="let the model be downloaded")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache folder")


def apply_common_arguments(config: TextureJobConfig | EditJobConfig, args: argparse.Namespace) -> None:
    """add_common_arguments' flags (but --out, which each config takes when it is made) into a
    TextureJobConfig or an EditJobConfig."""
    config.seed, config.device, config.learning_rate = args.seed, args.device, args.lr
    config.preview_every = args.preview_every
    config.prior.controlnets = args.controlnet
    config.prior.allow_download = args.allow_download
    config.prior.cache_dir = args.cache_dir


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a texture job's output folder (with state.pt), or a textured .glb/.obj")
    parser.add_argument("--target-prompt", required=True, help="the object as it should become")
    parser.add_argument("--edit-prompt", required=True, help="the attribute to change or remove, e.g. \"red\"")
    add_common_arguments(parser, controlnet_auto="the source's")
    parser.add_argument("--w1", type=float, default=1.0, help="weight of the target prompt's classifier score")
    parser.add_argument("--w2", type=float, default=0.5,
                        help="weight of the edit prompt's (subtracted) classifier score")
    parser.add_argument("--steps", type=int, default=None, help="default: 150 (bundled) / 800")
    parser.add_argument("--preserve-weight", type=float, default=DEFAULT_PRESERVE_WEIGHT,
                        help="image-space L2 to the source's renders (0: off)")
    parser.add_argument("--edit-geometry", action="store_true", help="also move a generated asset's surface")
    parser.add_argument("--model", default=SOURCE_MODEL,
                        help="hub id, local diffusers folder, 'bundled', or 'source' (the source's model; default)")
    parser.add_argument("--render-size", type=int, default=None, help="default: the source's")
    parser.add_argument("--texture-size", type=int, default=None, help="default: the source's")
    parser.add_argument("--fit-steps", type=int, default=DEFAULT_FIT_STEPS,
                        help="steps fitting a field to a mesh file's texture before editing")
    parser.add_argument("--up-axis", choices=("Y", "Z"), default=None, help="a mesh file's up axis")
    parser.add_argument("--material", choices=typing.get_args(Material), default=None,
                        help="albedo: base colour only; pbr: base colour, roughness and metallic "
                             "(default: the source's; for a mesh file as for texture)")
    parser.add_argument("--region", default=None, metavar="FILE.npy",
                        help="edit only these faces of the source's mesh (face indices or a per-face bool mask); "
                             "the rest keeps the source's texture")


def edit_config_from_args(args: argparse.Namespace) -> EditJobConfig:
    config = EditJobConfig(source=args.source, target_prompt=args.target_prompt, edit_prompt=args.edit_prompt,
                           out=args.out, steps=args.steps, render_size=args.render_size,
                           texture_size=args.texture_size, preserve_weight=args.preserve_weight,
                           fit_steps=args.fit_steps, edit_geometry=args.edit_geometry, up_axis=args.up_axis,
                           material=args.material, region=args.region)
    apply_common_arguments(config, args)
    config.guidance.w1, config.guidance.w2_start, config.guidance.w2_end = args.w1, args.w2, args.w2
    config.prior.model = args.model
    return config


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """`python -m engine generate ...`. Flags left out keep the saved value under --resume."""
    parser.add_argument("--prompt", default=None, help="what to make (required unless --resume)")
    parser.add_argument("--out", default=None, help="output folder (default with --resume: that folder)")
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="continue the cancelled or crashed run whose output folder is DIR")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--model", default=None, help="both stages' prior (default: bundled)")
    parser.add_argument("--stage1-model", default=None, help="pixel-space prior of the NeRF stage "
                        "(DeepFloyd IF stage I style folder or hub id, or 'bundled')")
    parser.add_argument("--stage2-model", default=None, help="prior of the refinement stage "
                        "(Stable Diffusion 2.1 base style, or 'bundled')")
    parser.add_argument("--steps1", type=int, default=None,
                        help=f"NeRF steps (default {NERF_STAGE_STEPS}; bundled prior: 300)")
    parser.add_argument("--steps2", type=int, default=None,
                        help=f"refinement steps (default {REFINE_STAGE_STEPS}; bundled prior: 300)")
    parser.add_argument("--render-size1", type=int, default=None,
                        help="NeRF render size (default 64; bundled prior: 32)")
    parser.add_argument("--render-size2", type=int, default=None, help="refinement render size (default 512)")
    parser.add_argument("--stages", choices=typing.get_args(GenerateStages), default=None,
                        help="run both stages (default), only the NeRF, or only the refinement")
    parser.add_argument("--stage1-state", default=None, help="stage1.pt to refine (with --stages 2)")
    parser.add_argument("--perp-neg", choices=typing.get_args(PerpNegMode), default=None,
                        help="Perp-Neg view prompts (auto: off for prompts without a clear front)")
    parser.add_argument("--mesh-resolution", type=int, default=None, help="marching-cubes grid (default 256)")
    parser.add_argument("--target-triangles", type=int, default=None, help="decimate to this many (default 50000)")
    parser.add_argument("--size", type=float, default=None, help="largest side of the asset in metres (default 1)")
    parser.add_argument("--texture-size", type=int, default=None, help="default 1024")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--preview-every", type=int, default=None, help="steps between previews (0: none)")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="steps between saved states")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the diffusion UNets with CUDA graphs (faster long runs on a GPU)")
    parser.add_argument("--allow-download", action="store_true", help="let the models be downloaded")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache folder")


def generate_config_from_args(args: argparse.Namespace) -> GenerateJobConfig:
    if args.resume is not None:
        config = load_saved_config(Path(args.resume))
        config.out = args.out or args.resume
        config.resume = True
        if args.prompt is not None and args.prompt != config.prompt:
            raise BadInputError("--prompt differs from the prompt of the run being resumed.",
                                "Leave out --prompt with --resume, or start a new run with another --out.")
    else:
        if args.prompt is None or args.out is None:
            raise BadInputError("generate needs --prompt and --out (or --resume DIR).",
                                "Example: python -m engine generate --prompt \"a blue cube\" --out out/")
        config = GenerateJobConfig.defaults_for(args.prompt, args.out, args.stage1_model or args.model or BUNDLED_MODEL,
                                                args.stage2_model or args.model or BUNDLED_MODEL)
    _set(config, "negative_prompt", args.negative_prompt)
    for stage, model in ((config.stage1, args.stage1_model or args.model), (config.stage2, args.stage2_model or args.model)):
        _set(stage.prior, "model", model)
        if args.allow_download:
            stage.prior.allow_download = True
        _set(stage.prior, "cache_dir", args.cache_dir)
    _set(config.stage1, "steps", args.steps1)
    _set(config.stage2, "steps", args.steps2)
    _set(config.stage1, "render_size", args.render_size1)
    _set(config.stage2, "render_size", args.render_size2)
    _set(config.stage1, "perp_neg", args.perp_neg)
    _set(config, "stages", args.stages)
    _set(config, "stage1_state", args.stage1_state)
    _set(config.extract, "resolution", args.mesh_resolution)
    _set(config.extract, "target_triangles", args.target_triangles)
    _set(config.extract, "size_m", args.size)
    for name in ("texture_size", "seed", "device", "preview_every", "checkpoint_every", "compile"):
        _set(config, name, getattr(args, name))
    return config


def _set(target, name: str, value) -> None:
    if value is not None:
        setattr(target, name, value)


def add_texture_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mesh", help="OBJ, glTF/GLB or PLY file, or a job folder's mesh.npz")
    parser.add_argument("--prompt", required=True)
    add_common_arguments(parser, controlnet_auto="the model family's depth and canny ControlNets: "
                                                 "SD 1.x and SDXL; none for SD 2.x and pixel models")
    parser.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT)
    parser.add_argument("--model", default="bundled", help="hub id, local diffusers folder, or 'bundled'")
    parser.add_argument("--guidance", choices=("csd", "sds"), default="csd")
    parser.add_argument("--steps", type=int, default=None, help="default: 300 (bundled) / 2000")
    parser.add_argument("--render-size", type=int, default=None,
                        help="default: 64 (bundled), a latent model's own (SD 1.x 512, SD 2.x 768-v 768, SDXL 1024), "
                             "512 (IF)")
    parser.add_argument("--texture-size", type=int, default=None, help="default: 512 (bundled) / 1024")
    parser.add_argument("--w1", type=float, default=1.0, help="CSD weight of the prompt's classifier score")
    parser.add_argument("--w2-start", type=float, default=1.0, help="CSD negative-prompt weight at the start")
    parser.add_argument("--w2-end", type=float, default=0.5, help="... and at the end (linear)")
    parser.add_argument("--cfg-scale", type=float, default=100.0, help="SDS classifier-free guidance scale")
    parser.add_argument("--reunwrap", action="store_true", help="ignore the mesh's UVs and unwrap anew")
    parser.add_argument("--up-axis", choices=("Y", "Z"), default=None, help="the mesh file's up axis")
    parser.add_argument("--material", choices=typing.get_args(Material), default=None,
                        help="albedo: base colour only; pbr: base colour, roughness and metallic "
                             "(default: pbr, albedo for the bundled prior)")
    parser.add_argument("--region", default=None, metavar="FILE.npy",
                        help="texture only these faces (face indices or a per-face bool mask, in the mesh's order)")
    parser.add_argument("--keep-texture", default=None, metavar="IMAGE",
                        help="with --region: the texture kept outside it, in the mesh's UV layout "
                             "(default: the mesh file's own texture)")


def texture_config_from_args(args: argparse.Namespace) -> TextureJobConfig:
    config = TextureJobConfig(prompt=args.prompt, mesh=args.mesh, out=args.out,
                              negative_prompt=args.negative_prompt, steps=args.steps,
                              render_size=args.render_size, texture_size=args.texture_size,
                              reunwrap=args.reunwrap, up_axis=args.up_axis, material=args.material,
                              region=args.region, keep_texture=args.keep_texture)
    apply_common_arguments(config, args)
    config.guidance.mode = args.guidance
    config.guidance.w1, config.guidance.w2_start, config.guidance.w2_end = args.w1, args.w2_start, args.w2_end
    config.guidance.cfg_scale = args.cfg_scale
    config.prior.model = args.model
    return config


def _run(task: str, config, out: Path, reporter: ProgressReporter, cancel: CancelToken) -> int:
    """The task table's pipeline for `task` (engine/pipelines/tasks.py), run inside run_pipeline:
    a failing import, like bad settings (the pipeline validates its config first), still ends in
    a result.json. Models the pipeline downloads report to the job's progress and stop on its cancel."""
    from .job.runner import run_pipeline
    from .prior.hub import report_downloads_to

    def pipeline(context) -> dict[str, str]:
        context.cancel.check()  # a cancel held since start-up ends the job before any work (engine/__main__.py)
        with report_downloads_to(context.reporter, context.cancel):
            return TASKS[task](config, context)

    return run_pipeline(task, to_dict(config), out, config.device, pipeline, reporter, cancel)


def command_texture(args: argparse.Namespace) -> int:
    return _run("texture", texture_config_from_args(args), Path(args.out), ProgressReporter(), CancelToken())


def command_generate(args: argparse.Namespace) -> int:
    config = generate_config_from_args(args)
    return _run("generate", config, Path(config.out), ProgressReporter(), CancelToken())


def command_edit(args: argparse.Namespace) -> int:
    return _run("edit", edit_config_from_args(args), Path(args.out), ProgressReporter(), CancelToken())


def command_run(args: argparse.Namespace) -> int:
    job_dir = Path(args.job_dir)
    reporter = ProgressReporter(jsonl_path=progress_log_path(job_dir))
    spec = None
    try:
        spec = read_job(job_dir)
        cancel = CancelToken(spec.cancel_path)
        config = config_from_job(spec)
        return _run(spec.task, config, spec.output_dir, reporter, cancel)
    except EngineError as exc:
        reporter.emit("error", **exc.to_dict())
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        if job_dir.is_dir():
            try:
                # The job's own output folder when job.json named a good one, else the default; never
                # through a link, even when the refusal was about that folder.
                out = spec.output_dir if spec is not None else inside_folder(job_dir, "out", "out", JobFileError)
                publish_result_only(out, result_document("unknown", "error", {}, {}, {}, exc.to_dict()))
            except (OSError, EngineError):
                pass
        return exc.exit_code


def command_models_list(args: argparse.Namespace) -> int:
    from .prior.hub import list_models

    reporter = ProgressReporter()
    for entry in list_models(args.models, args.cache_dir):
        reporter.emit("model", **entry.to_dict())
        if reporter.human:
            state = "complete" if entry.complete else (f"partial, missing {', '.join(entry.missing)}" if entry.local
                                                       else "not on this machine")
            sys.stderr.write(f"{entry.model:<55} {entry.size if entry.local else '':>10}  {state}  ({entry.use})\n")
    reporter.emit("finished", status="ok")
    return 0


def command_models_download(args: argparse.Namespace) -> int:
    from .prior.hub import hub_model_folder, report_downloads_to, size_on_disk

    reporter = ProgressReporter()
    cancel = CancelToken()
    cancel.install_signal_handlers()  # Ctrl-C (SIGINT) or the add-on's SIGTERM stop the download
    try:
        if args.model == BUNDLED_MODEL or Path(args.model).expanduser().exists():
            raise BadInputError(f"{args.model!r} is not a Hugging Face Hub id (owner/name).",
                                "The bundled prior and local folders need no download.")
        with report_downloads_to(reporter, cancel):
            folder = hub_model_folder(args.model, args.cache_dir, allow_download=args.allow_download)
    except EngineError as exc:
        reporter.emit("error", **exc.to_dict())
        reporter.emit("finished", status="cancelled" if isinstance(exc, Cancelled) else "error")
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    finally:
        cancel.restore_signal_handlers()
    size = size_on_disk(folder)
    print(f"{args.model} is on this machine ({format_bytes(size)}): {folder}", file=sys.stderr)
    reporter.emit("finished", status="ok", model=args.model, path=str(folder), size_bytes=size)
    return 0


def add_models_commands(commands) -> None:
    models = commands.add_parser("models", help="which models are on this machine; fetch one")
    actions = models.add_subparsers(dest="models_command", required=True)
    listing = actions.add_parser("list", help="the default models and the pipelines in the Hugging Face cache, "
                                              "with their size on disk (JSON lines)")
    listing.add_argument("models", nargs="*", help="more hub ids or folders to report on")
    listing.add_argument("--cache-dir", default=None, help="Hugging Face cache folder")
    listing.set_defaults(handler=command_models_list)
    download = actions.add_parser("download", help="fetch only the files the engine loads of a hub model "
                                                   "(size first, progress as JSON lines, Ctrl-C cancels)")
    download.add_argument("model", help="hub id, owner/name")
    download.add_argument("--allow-download", action="store_true",
                          help="go online (without it only says whether the model is already here)")
    download.add_argument("--cache-dir", default=None, help="Hugging Face cache folder")
    download.set_defaults(handler=command_models_download)


def add_serve_command(commands) -> None:
    serve = commands.add_parser("serve", help="run jobs sent over HTTP on this machine's GPUs or a Ray cluster "
                                              "(docs/remote.md)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (anything but loopback needs "
                                                           "--token-file)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token-file", type=Path, default=None,
                       help="file holding the token clients must send (Authorization: Bearer TOKEN)")
    serve.add_argument("--ray-address", default=None,
                       help="a Ray cluster to run jobs on (auto, or HOST:PORT); default: Ray on this machine")
    serve.add_argument("--max-upload-mb", type=int, default=512, help="largest job folder accepted, zipped")
    serve.add_argument("--jobs-dir", type=Path, default=Path("engine-jobs"),
                       help="where the queue, every job's files and its outputs are kept")
    serve.add_argument("--keep-days", type=float, default=7.0,
                       help="delete finished jobs after this many days (0: never)")
    serve.add_argument("--models-dir", type=Path, default=None,
                       help="a folder of diffusers models jobs may name by path")
    serve.add_argument("--allow-download", action="store_true",
                       help="let jobs fetch models from the Hugging Face Hub")
    serve.set_defaults(handler=command_serve)


def command_serve(args: argparse.Namespace) -> int:
    from .server.serve import ServeSettings, serve

    return serve(ServeSettings(host=args.host, port=args.port, token_file=args.token_file,
                               ray_address=args.ray_address, max_upload_mb=args.max_upload_mb,
                               jobs_dir=args.jobs_dir, keep_days=args.keep_days, models_dir=args.models_dir,
                               allow_download=args.allow_download))


def add_batch_command(commands) -> None:
    batch = commands.add_parser("batch", help="run the jobs of a manifest (CSV or JSON lines) on this machine, a Ray "
                                              "cluster or a server (docs/remote.md)",
                                description="Exit codes: 0 every job ok (or done already), 1 a job failed, "
                                            "2 the manifest or the arguments are wrong, 130 stopped by Ctrl-C.")
    batch.add_argument("manifest", type=Path, help="MANIFEST.csv or MANIFEST.jsonl: one job per row")
    batch.add_argument("--out", type=Path, required=True,
                       help="folder for each job's output folder (DIR/NAME) and summary.json")
    batch.add_argument("--ray-address", default=None,
                       help="a Ray cluster to run the jobs on (auto, or HOST:PORT); default: Ray on this machine")
    batch.add_argument("--server", default=None, metavar="URL",
                       help="run the jobs on an engine server (python -m engine serve), e.g. http://127.0.0.1:8765")
    batch.add_argument("--token-file", type=Path, default=None, help="file holding the server's token")
    batch.add_argument("--jobs-dir", type=Path, default=None,
                       help="the batch's own job store when running here (default: DIR/.batch-jobs)")
    batch.add_argument("--models-dir", type=Path, default=None,
                       help="a folder of diffusers models the jobs may name by path (as serve's --models-dir)")
    batch.set_defaults(handler=command_batch)


def command_batch(args: argparse.Namespace) -> int:
    from .batch.run import BatchOptions, run_batch

    return run_batch(BatchOptions(manifest=args.manifest, out=args.out, ray_address=args.ray_address,
                                  server=args.server, token_file=args.token_file, jobs_dir=args.jobs_dir,
                                  models_dir=args.models_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine",
                                     description="CSD texture, generate and edit jobs (csd-blender's engine).")
    commands = parser.add_subparsers(dest="command", required=True)
    texture = commands.add_parser("texture", help="texture a mesh from a prompt")
    add_texture_arguments(texture)
    texture.set_defaults(handler=command_texture)
    generate = commands.add_parser("generate", help="generate a new textured asset from a prompt")
    add_generate_arguments(generate)
    generate.set_defaults(handler=command_generate)
    edit = commands.add_parser("edit", help="edit a texture (or a textured mesh) with a target and an edit prompt")
    add_edit_arguments(edit)
    edit.set_defaults(handler=command_edit)
    run = commands.add_parser("run", help="run a job folder written by the Blender add-on")
    run.add_argument("job_dir")
    run.set_defaults(handler=command_run)
    add_models_commands(commands)
    add_serve_command(commands)
    add_batch_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except EngineError as exc:  # settings rejected before a job (and its output folder) exists
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
