"""`p2pai pull MODEL` and `p2pai models [list | delete NAME]`: a running node's model jobs, from
the command line, with a progress bar."""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from pathlib import PurePosixPath
from typing import TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from .console import console
from .protocol.localai import ApplyRequest, ApplyResponse, GalleryFile, JobStatus
from .protocol.openai import ModelList
from .settings import env_default

M = TypeVar("M", bound=BaseModel)
REQUEST_TIMEOUT = 30.0
POLL_S = 0.25
REMOTE = ("http://", "https://", "github:", "huggingface://")


class CommandError(Exception):
    pass


def add_node_url_arguments(parser: argparse.ArgumentParser, sub: bool = False) -> None:
    """``sub``: a subcommand's copy, which keeps what was given before the subcommand's name."""
    url = argparse.SUPPRESS if sub else env_default("URL", "http://127.0.0.1:8080")
    key = argparse.SUPPRESS if sub else env_default("API_KEY")
    parser.add_argument("--url", default=url, help="the node's API (default http://127.0.0.1:8080; P2PAI_URL)")
    parser.add_argument("--api-key", default=key, help="the node's API key (P2PAI_API_KEY)")


def add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a gallery's model (NAME or GALLERY@NAME), a model of the swarm (NAME), the URL "
                                      "of a model definition, or the URL of a GGUF file (with --sha256)")
    parser.add_argument("--name", help="install under this name (a gallery's model or a URL)")
    parser.add_argument("--sha256", help="the SHA-256 of a GGUF file given by URL (nothing unverified is installed)")
    add_node_url_arguments(parser)


def pull_request(model: str, name: str | None, sha256: str | None) -> ApplyRequest:
    if model.startswith(REMOTE) and PurePosixPath(urlsplit(model).path).suffix == ".gguf":
        if not sha256:
            raise CommandError("give the file's --sha256: p2pai installs only files it can verify")
        filename = PurePosixPath(urlsplit(model).path).name
        return ApplyRequest(name=name or PurePosixPath(filename).stem,
                            files=[GalleryFile(filename=filename, sha256=sha256, uri=model)])
    if model.startswith(REMOTE):
        return ApplyRequest(url=model, name=name)
    if "@" in model:
        return ApplyRequest(id=model, name=name)
    return ApplyRequest(name=model) if name is None else ApplyRequest(id=model, name=name)


def pull(args: argparse.Namespace) -> int:
    try:
        request = pull_request(args.model, args.name, args.sha256)
        started = _call(args, "POST", "/models/apply", ApplyResponse, request)
        status = follow(args, started.uuid)
    except CommandError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    if status.error:
        console.print(f"[red]error:[/] {status.error}")
        return 1
    console.print(f"[green]{status.message}[/]")
    return 0


def follow(args: argparse.Namespace, job: str) -> JobStatus:
    """Show the job's progress until it ends."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[sources]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("starting", total=None, sources="")
        while True:
            status = _call(args, "GET", f"/models/jobs/{job}", JobStatus)
            progress.update(task, description=status.file_name or status.model, total=status.total_bytes or None,
                            completed=status.downloaded_bytes, sources=", ".join(status.sources))
            if status.processed:
                return status
            time.sleep(POLL_S)


def list_models(args: argparse.Namespace) -> int:
    try:
        models = _call(args, "GET", "/v1/models", ModelList)
    except CommandError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    table = Table(title="Models of the swarm", title_justify="left")
    for column in ("model", "size", "loaded on", "on disk on", "serving nodes"):
        table.add_column(column)
    for card in models.data:
        size = f"{card.size / 1e6:.1f} MB" if card.size else "?"
        table.add_row(card.id, size, _nodes(card.loaded_on), _nodes(card.on_disk) or "-", _nodes(card.nodes))
    console.print(table)
    return 0


def delete_model(args: argparse.Namespace) -> int:
    try:
        _call(args, "POST", f"/models/delete/{args.name}", ApplyResponse)
    except CommandError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    console.print(f"deleted {args.name}")
    return 0


def _nodes(ids: list[str]) -> str:
    return ", ".join(node if len(node) <= 14 else f"…{node[-8:]}" for node in ids)


def _call(args: argparse.Namespace, method: str, path: str, answer: type[M], body: BaseModel | None = None) -> M:
    data = body.model_dump_json(exclude_none=True).encode() if body is not None else None
    request = urllib.request.Request(args.url.rstrip("/") + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if args.api_key:
        request.add_header("Authorization", f"Bearer {args.api_key}")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return answer.model_validate_json(response.read())
    except urllib.error.HTTPError as exc:
        raise CommandError(f"{args.url} answered {exc.code}: {_error_message(exc)}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise CommandError(f"cannot reach a node at {args.url}: {getattr(exc, 'reason', exc)}") from exc
    except ValidationError as exc:
        raise CommandError(f"{args.url} answered {path} with something else: {exc}") from exc


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(exc)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return str(exc.reason)
