"""`python -m llava_onevision2.hub_upload {export,push,convert} ...`"""

import argparse
import json
import os
import sys


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m llava_onevision2.hub_upload")
    commands = main.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="write a self-contained model folder and verify it")
    export.add_argument("output")
    export.add_argument("--source", help="trained or converted checkpoint folder")
    export.add_argument("--processor", help="processor folder (default: the source)")
    export.add_argument("--preset", help="build random weights from a preset instead of --source (tests)")
    export.add_argument("--config-overrides", type=json.loads, default=None, help="JSON, with --preset")
    export.add_argument("--repo-id", default="your-name/llava-onevision2")
    export.add_argument("--base-model", default="lmms-lab-encoder/LLaVA-OneVision-2-8B-Instruct")
    export.add_argument("--license", default="apache-2.0")
    export.add_argument("--max-shard-size", default="5GB")
    export.add_argument("--no-verify", action="store_true")

    push = commands.add_parser("push", help="upload an exported folder")
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision")
    push.add_argument("--message", default="Upload LLaVA-OneVision-2 export")
    push.add_argument("--token", default=os.environ.get("HF_TOKEN"))
    push.add_argument("--large-folder", action="store_true", default=None)
    push.add_argument("--dry-run", action="store_true")

    convert = commands.add_parser("convert", help="convert checkpoints into folders this code loads")
    kinds = convert.add_subparsers(dest="kind", required=True)
    release = kinds.add_parser("release", help="a released LLaVA-OneVision-2 checkpoint folder")
    release.add_argument("source")
    release.add_argument("output")
    release.add_argument("--link", action="store_true", help="hard-link the weights instead of copying")
    pair = kinds.add_parser("encoder-plus-llm", help="OneVision-Encoder + Qwen3 -> stage-0 starting checkpoint")
    pair.add_argument("encoder")
    pair.add_argument("llm")
    pair.add_argument("output")
    pair.add_argument("--spatial-merge-size", type=int, default=2)
    pair.add_argument("--processor")
    pair.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: the language model's")
    pair.add_argument("--max-shard-size", type=int, default=5 * 1024**3, help="bytes per output shard")

    return main


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.command == "export":
        from .export import export

        report = export(
            args.output,
            source=args.source,
            processor_path=args.processor,
            preset=args.preset,
            config_overrides=args.config_overrides,
            repo_id=args.repo_id,
            base_model=args.base_model,
            license=args.license,
            max_shard_size=args.max_shard_size,
            verify=not args.no_verify,
        )
        print(json.dumps(report, indent=2))
    elif args.command == "push":
        from .push import format_plan, push

        plan = push(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.message,
            token=args.token,
            large_folder=args.large_folder,
            dry_run=args.dry_run,
        )
        print(format_plan(plan))
    else:
        import torch

        from .convert import convert_encoder_plus_llm, convert_release

        try:
            if args.kind == "release":
                report = convert_release(args.source, args.output, link=args.link)
            else:
                report = convert_encoder_plus_llm(
                    args.encoder,
                    args.llm,
                    args.output,
                    spatial_merge_size=args.spatial_merge_size,
                    processor=args.processor,
                    dtype=getattr(torch, args.dtype) if args.dtype else None,
                    max_shard_size=args.max_shard_size,
                )
        except (FileNotFoundError, FileExistsError, ValueError) as error:
            # Bad input: the message names the folder and the fix; nothing was written.
            print(f"convert {args.kind}: {error}", file=sys.stderr)
            return 2
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
