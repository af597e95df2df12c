"""`python -m engine`: the command line, for people and for the add-on (`run JOB_DIR`).

Job subcommands build a typed job config, validate it, and hand it to `run_pipeline`, which
guarantees a result.json and a documented exit code for every outcome. `models list` and
`models download` tell which models are on this machine and fetch one (only the files the
engine loads); they print JSON lines too, and import no PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .config import (BUNDLED_MODEL, DEFAULT_NEGATIVE_PROMPT, TextureJobConfig, add_common_arguments,
                     apply_common_arguments, to_dict, update_from_dict)
from .errors import BadInputError, Cancelled, EngineError, JobFileError
from .job.progress import CancelToken, ProgressReporter, format_bytes
from .job.paths import inside_folder
from .job.outputs import publish_result_only
from .job.protocol import progress_log_path, read_job, result_document
from .pipelines.generate_config import add_generate_arguments, generate_config_from_args, generate_config_from_job
from .pipelines.edit_config import add_edit_arguments, edit_config_from_args, edit_config_from_job


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


def texture_config_from_args(args: argparse.Namespace) -> TextureJobConfig:
    config = TextureJobConfig(prompt=args.prompt, mesh=args.mesh, out=args.out,
                              negative_prompt=args.negative_prompt, steps=args.steps,
                              render_size=args.render_size, texture_size=args.texture_size,
                              reunwrap=args.reunwrap, up_axis=args.up_axis)
    apply_common_arguments(config, args)
    config.guidance.mode = args.guidance
    config.guidance.w1, config.guidance.w2_start, config.guidance.w2_end = args.w1, args.w2_start, args.w2_end
    config.guidance.cfg_scale = args.cfg_scale
    config.prior.model = args.model
    return config


def texture_config_from_job(settings: dict, mesh: Path, out: Path) -> TextureJobConfig:
    for key in ("mesh", "out"):
        if key in settings:
            raise JobFileError(f"job.json settings may not contain {key!r}.",
                               "Give the mesh as the job's top-level 'mesh' and the folder as 'output'.")
    if "prompt" not in settings:
        raise JobFileError("job.json settings have no 'prompt'.", "")
    config = TextureJobConfig(prompt="", mesh=str(mesh), out=str(out))
    return update_from_dict(config, settings)


def _run(task: str, config, out: Path, reporter: ProgressReporter, cancel: CancelToken) -> int:
    """engine/pipelines/<task>.py's run_<task>, imported inside run_pipeline: a failing import, like
    bad settings (the pipeline validates its config first), still ends in a result.json. Models
    the pipeline downloads report to the job's progress and stop on its cancel."""
    from .job.runner import run_pipeline
    from .prior.hub import report_downloads_to

    def pipeline(context) -> dict[str, str]:
        context.cancel.check()  # a cancel held since start-up ends the job before any work (engine/__main__.py)
        module = importlib.import_module(f".pipelines.{task}", __package__)
        with report_downloads_to(context.reporter, context.cancel):
            return getattr(module, f"run_{task}")(config, context)

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
        if spec.task == "texture":
            config = texture_config_from_job(spec.settings, spec.mesh, spec.output_dir)
        elif spec.task == "generate":
            config = generate_config_from_job(spec.settings, spec.output_dir)
            if config.stage1_state is not None:  # from job.json, or from the saved settings of a resumed run
                config.stage1_state = str(spec.inside(config.stage1_state, "settings.stage1_state"))
        elif spec.task == "edit":
            config = edit_config_from_job(spec.settings, spec.source, spec.output_dir)
        else:
            raise JobFileError(f"This engine cannot run {spec.task!r} jobs yet.", "Update the engine.")
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
