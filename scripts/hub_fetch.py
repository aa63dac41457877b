#!/usr/bin/env python3
"""Download what scripts/export_onnx.py needs from a Hugging Face hub repository, resumably
and checked. Run by scripts/fetch-model.sh (after its reachability probe):

  hub_fetch.py REPO_ID DEST [--revision REV]

What: the repository's own file listing (HfApi.model_info with files_metadata) decides the
files: config.json, tokenizer.json and the safetensors weights (model.safetensors, or the
shards model.safetensors.index.json names) are required; generation_config.json,
tokenizer_config.json, special_tokens_map.json and tokenizer.model are taken where present.
All of them at the one commit the listing reports, so a push in between cannot mix versions.

Why not hf_hub_download: huggingface_hub 2.4.0 downloads into a process-unique
`<etag>.<uuid>.incomplete` file that it deletes on any failure (file_download.py,
_download_to_tmp_and_move), so an interrupted download always starts over; and it checks only
the size of what it received, never its sha256 (http_get's "Consistency check"). Here each
file goes into DEST/.incomplete/<name>.<etag>.incomplete, kept across runs (a rerun resumes it
with a Range request through huggingface_hub's own http_get, which also retries a dropped
connection 5 times from where it stopped), and every LFS file's sha256 is checked against the
hub's metadata (the listing's lfs.sha256, which must agree with the X-Linked-Etag of the file's
HEAD) before it is moved into place. A file already in DEST is kept when it still has the
hub's sha256 (LFS) or git blob id (small files), so reruns download nothing.

Honours HF_ENDPOINT and HF_TOKEN (huggingface_hub reads both; the token is not sent to a CDN
that a large file redirects to). Exit codes: 0 ok, 1 failure (a required file missing from the
repository, a checksum mismatch, the hub refusing or failing), 130 interrupted (rerun to resume).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import urljoin, urlparse

import httpx2
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url, http_get
from huggingface_hub.utils import build_hf_headers

from trendstory_tools.digests import sha256_file

REQUIRED = ("config.json", "tokenizer.json")
OPTIONAL = ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
            "tokenizer.model")
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
NEEDS = "the export needs config.json, tokenizer.json and model.safetensors (or " \
        "model.safetensors.index.json and its shards)"
PARTIAL_DIR = ".incomplete"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class FetchError(Exception):
    """A failure with a message for the user (exit 1)."""


def log(msg: str) -> None:
    print(f"fetch-model: {msg}", flush=True)


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file: what the hub sends as the ETag of a small (non-LFS) file."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def plan_files(repo: str, listing: dict) -> tuple[list[str], bool]:
    """The files to fetch, in order, from the repository listing {name: RepoSibling}; and
    whether the weights are sharded (the shards are added once the index is downloaded).
    A required file that the repository does not hold is an error naming both."""
    for name in REQUIRED:
        if name not in listing:
            raise FetchError(f"{repo} has no {name} ({NEEDS}); it holds: {', '.join(sorted(listing))}")
    if WEIGHTS in listing:
        weights, sharded = [WEIGHTS], False
    elif WEIGHTS_INDEX in listing:
        weights, sharded = [WEIGHTS_INDEX], True
    else:
        raise FetchError(f"{repo} has no {WEIGHTS} nor {WEIGHTS_INDEX} ({NEEDS}; other weight "
                         f"formats are not read); it holds: {', '.join(sorted(listing))}")
    return [*REQUIRED, *weights, *(n for n in OPTIONAL if n in listing)], sharded


def shards_of(repo: str, index_path: Path, listing: dict) -> list[str]:
    """The shard files model.safetensors.index.json's weight_map names, each checked to be in
    the repository listing."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FetchError(f"{repo}: {WEIGHTS_INDEX} has no usable weight_map ({e})")
    for s in shards:
        if s not in listing:
            raise FetchError(f"{repo} has no {s}, a shard that {WEIGHTS_INDEX} names ({NEEDS})")
    return shards


def same_origin(a: str, b: str) -> bool:
    pa, pb = urlparse(a), urlparse(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def fetch_file(repo: str, commit: str, name: str, sibling, dest: Path, endpoint: str,
               token: str | None) -> Path:
    """One file into dest/name: kept when already there with the hub's checksum, otherwise
    downloaded (resumed from dest/.incomplete/<name>.<etag>.incomplete when that exists),
    checked and moved into place. Returns its path."""
    url = hf_hub_url(repo, name, revision=commit, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)  # HEAD /resolve
    except RemoteEntryNotFoundError:
        raise FetchError(f"{repo} has no {name} at commit {commit} (the hub's listing names it, "
                         f"but {url} is 404; {NEEDS})")
    etag = meta.etag or ""
    lfs = getattr(sibling, "lfs", None)
    expected_sha = lfs.sha256 if lfs is not None else None
    if expected_sha is None and SHA256_RE.match(etag):
        expected_sha = etag  # a listing without LFS details: the HEAD's X-Linked-Etag is the sha256
    if expected_sha is not None and SHA256_RE.match(etag) and etag != expected_sha:
        raise FetchError(f"{repo}/{name}: the hub's listing gives sha256 {expected_sha} but its "
                         f"file metadata (X-Linked-Etag) gives {etag}; retry later")
    size = lfs.size if lfs is not None else (meta.size if meta.size is not None else sibling.size)
    location = urljoin(url, meta.location)  # the CDN a large file redirects to, or url itself

    final = dest / name
    if final.is_file():
        if expected_sha is not None:
            if sha256_file(final) == expected_sha:
                log(f"  {name}: already here (sha256 ok)")
                return final
            log(f"  {name}: differs from the hub's (sha256); downloading it again")
        elif etag and git_blob_sha1(final) == etag:
            log(f"  {name}: already here (git blob id ok)")
            return final
        final.unlink()

    partial = dest / PARTIAL_DIR / f"{name}.{etag or 'noetag'}.incomplete"
    partial.parent.mkdir(parents=True, exist_ok=True)
    for stale in partial.parent.glob(f"{Path(name).name}.*.incomplete"):
        if stale != partial:  # a partial download of another version of the file
            stale.unlink()
    # Small files are fetched whole: the hub may gzip them, which Range requests do not mix with.
    resume = partial.stat().st_size if expected_sha is not None and partial.exists() else 0
    if size is not None and resume > size:
        resume = 0
    headers = build_hf_headers(token=token)
    if not same_origin(url, location):
        headers.pop("authorization", None)  # a signed CDN url: the token stays on the hub
    if resume:
        log(f"  {name}: resuming at byte {resume} of {size}")
    with open(partial, "r+b" if resume else "wb") as f:
        f.seek(resume)
        f.truncate()
        try:
            http_get(location, f, resume_size=resume, headers=headers, expected_size=size,
                     displayed_filename=name)
        except (httpx2.HTTPError, OSError) as e:
            f.flush()
            raise FetchError(f"downloading {repo}/{name} failed ({type(e).__name__}: {e}); "
                             f"{f.tell()} bytes are kept in {partial}, a rerun resumes there")

    if expected_sha is not None:
        actual = sha256_file(partial)
        if actual != expected_sha:
            partial.unlink()
            raise FetchError(f"{repo}/{name}: sha256 mismatch: expected {expected_sha} (the hub's "
                             f"LFS metadata), got {actual}; removed the download, a rerun "
                             f"fetches it again")
    os.replace(partial, final)
    log(f"  {name} ({final.stat().st_size} bytes{', sha256 ok' if expected_sha else ''})")
    return final


def fetch(repo: str, dest: Path, revision: str = "main", endpoint: str | None = None,
          token: str | None = None) -> list[Path]:
    """Everything the export needs from repo into dest; returns the files' paths."""
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    token = token or os.environ.get("HF_TOKEN") or None
    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True)
    except GatedRepoError:
        raise FetchError(f"{repo} is gated on {endpoint}: accept its terms on the hub and set "
                         "HF_TOKEN to a token of that account")
    except RepositoryNotFoundError:
        raise FetchError(f"{repo} is not a model repository on {endpoint} (or it is private: "
                         "set HF_TOKEN)")
    except RevisionNotFoundError:
        raise FetchError(f"{repo} has no revision {revision!r} on {endpoint}")
    listing = {s.rfilename: s for s in (info.siblings or [])}
    commit = info.sha or revision
    names, sharded = plan_files(repo, listing)
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading {repo} (commit {commit}) into {dest}")
    paths = []
    for name in names:
        paths.append(fetch_file(repo, commit, name, listing[name], dest, endpoint, token))
        if sharded and name == WEIGHTS_INDEX:
            for shard in shards_of(repo, paths[-1], listing):
                paths.append(fetch_file(repo, commit, shard, listing[shard], dest, endpoint, token))
    # export_onnx.py reads every *.safetensors in the folder: drop weights of an older version.
    wanted = {p.name for p in paths}
    for old in dest.glob("*.safetensors"):
        if old.name not in wanted:
            log(f"  removing {old.name} (not in {repo} at {commit})")
            old.unlink()
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", help="hub repository id, e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    ap.add_argument("dest", type=Path, help="folder to download into (kept between runs)")
    ap.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    args = ap.parse_args(argv)
    try:
        fetch(args.repo, args.dest, args.revision)
    except FetchError as e:
        print(f"fetch-model: error: {e}", file=sys.stderr)
        return 1
    except (HfHubHTTPError, httpx2.HTTPError) as e:
        print(f"fetch-model: error: the hub failed while downloading {args.repo}: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fetch-model: interrupted; partial downloads are kept in "
              f"{args.dest / PARTIAL_DIR}, a rerun resumes them", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
