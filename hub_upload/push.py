"""Upload an exported folder to the Hugging Face Hub (or list what would be uploaded with `dry_run`)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from .export import REMOTE_CODE

EXPORT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "README.md",
    *REMOTE_CODE,
)


def export_files(folder: str) -> list[tuple[str, int]]:
    """(name, bytes) of every file in `folder`; raises when something is not part of an export."""
    root = Path(folder)
    if not (root / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not an exported model folder (no config.json).")
    files, strangers = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatch(name, pattern) for pattern in EXPORT_PATTERNS):
            files.append((name, path.stat().st_size))
        else:
            strangers.append(name)
    if strangers:
        raise ValueError(
            f"{folder} holds files that are not part of an export: {strangers[:10]}. Move them out (or re-export) "
            "before pushing."
        )
    return files


def push(
    folder: str,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload LLaVA-OneVision-2 export",
    token: str | None = None,
    large_folder: bool | None = None,
    dry_run: bool = False,
) -> dict:
    """Create the repo if needed and upload the folder; the token comes from the argument, `HF_TOKEN` or the login
    cache. Folders over 20 GB use the resumable large-folder upload unless `large_folder` says otherwise."""
    files = export_files(folder)
    total = sum(size for _, size in files)
    plan = {"repo_id": repo_id, "revision": revision, "private": private, "files": files, "total_bytes": total}
    if dry_run:
        return plan
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    use_large = large_folder if large_folder is not None else total > 20 * 2**30
    if use_large:
        api.upload_large_folder(repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision)
    else:
        api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message)
    plan["uploaded"] = True
    return plan


def format_plan(plan: dict) -> str:
    lines = [f"{name:60s} {size / 2**20:10.2f} MiB" for name, size in plan["files"]]
    lines.append(
        f"{len(plan['files'])} files, {plan['total_bytes'] / 2**30:.2f} GiB -> {plan['repo_id']}"
        + (f" @ {plan['revision']}" if plan["revision"] else "")
        + (" (private)" if plan["private"] else "")
    )
    return "\n".join(lines)


__all__ = ["export_files", "format_plan", "push"]
