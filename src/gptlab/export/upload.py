"""`gptlab upload`: export a run's checkpoint into a temporary folder and push it to the Hugging Face Hub.

The token comes from `HF_TOKEN` or the user's saved login (`huggingface_hub.get_token()`); it is handed
to `huggingface_hub` and never printed, logged or written. The Hub's address is `huggingface_hub`'s own
endpoint setting (`HF_ENDPOINT`). The export lives in a temporary folder that is removed whatever
happens, so a failed upload leaves nothing behind locally.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from gptlab.errors import UserError
from gptlab.hub import bound_hub_waits
from gptlab.rundir import DEFAULT_CHECKPOINT

EXPORT_FOLDER = "export"


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the Hub could not be reached or refused the call", whichever HTTP
    library this huggingface_hub version uses (requests, httpx or httpx2: read once it is loaded)."""
    from huggingface_hub.errors import HfHubHTTPError

    # ValueError, KeyError, TypeError: an answer that is not the JSON the client expects (a proxy's page, garbage)
    found: list[type[BaseException]] = [HfHubHTTPError, OSError, TimeoutError, ValueError, KeyError, TypeError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        error_type = getattr(sys.modules.get(module), name, None)
        if isinstance(error_type, type) and issubclass(error_type, BaseException):
            found.append(error_type)
    return tuple(found)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _hub_error(error: BaseException, endpoint: str, repo_id: str, token: str) -> UserError:
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status == 401:
        line = f"upload {repo_id}: the Hub at {endpoint} refused the token (HTTP 401); check HF_TOKEN or run `hf auth login` with a write token"
    elif isinstance(error, HfHubHTTPError) and status == 403:
        line = f"upload {repo_id}: the token may not write to {repo_id} (HTTP 403); use a token with write access to that owner"
    elif isinstance(error, HfHubHTTPError) and status is not None:
        line = f"upload {repo_id}: the Hub at {endpoint} answered HTTP {status} ({_first_line(error)})"
    elif isinstance(error, (ValueError, KeyError, TypeError)):
        line = f"upload {repo_id}: the Hub at {endpoint} gave an answer that is not what a Hub answers ({type(error).__name__}); check HF_ENDPOINT"
    else:
        line = f"upload {repo_id}: cannot reach the Hub at {endpoint} ({type(error).__name__}: {_first_line(error)}); check the network or HF_ENDPOINT"
    return UserError(line.replace(token, "***") if token else line)


def hub_token() -> Optional[str]:
    """HF_TOKEN, else the token saved by `hf auth login`; None when there is neither."""
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception as error:  # e.g. a failed OIDC exchange when HF_OIDC_RESOURCE is set
        raise UserError(
            f"upload: cannot read the Hugging Face token ({type(error).__name__}); check HF_TOKEN or run `hf auth login`"
        ) from None


def upload_run(
    run_dir: Path,
    repo_id: str,
    private: bool = False,
    checkpoint: str = DEFAULT_CHECKPOINT,
    dry_run: bool = False,
    eval_result: Optional[dict] = None,
    evaluate: bool = False,
    seed: int = 123,
    echo: Callable[[str], None] = print,
    license: Optional[str] = None,
    language: Optional[str] = "en",
) -> dict[str, Any]:
    """Export checkpoint `checkpoint` of the run and push it to model repository `repo_id` (created if absent).
    The result holds the model card (`card`), so a dry run can show what would be published."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UserError(
            f"REPO_ID {repo_id!r}: not a Hub repository id ({_first_line(error)}); use OWNER/NAME, e.g. alice/gpt2-brown"
        ) from None
    if "/" not in repo_id:
        raise UserError(f"REPO_ID {repo_id!r}: give the owner too, as OWNER/NAME (your user name or an organisation)")
    endpoint = constants.ENDPOINT
    api, token = None, ""
    if not dry_run:
        if constants.HF_HUB_OFFLINE:
            raise UserError(
                "upload: HF_HUB_OFFLINE is set, so huggingface_hub will not use the network; unset it to upload, or use --dry-run"
            )
        token = hub_token()
        if not token:
            raise UserError(
                "upload: no Hugging Face token; set HF_TOKEN or run `hf auth login` (a token with write access)"
            )
        from huggingface_hub import HfApi

        bound_hub_waits()
        api = HfApi(endpoint=endpoint, token=token)
        try:  # reachability and the token are checked before spending time on the export
            api.whoami()
        except _network_errors() as error:
            raise _hub_error(error, endpoint, repo_id, token) from None

    from gptlab.export.hf import export_run  # torch and the model code: only once the checks above pass

    with tempfile.TemporaryDirectory(prefix="gptlab-upload-") as temporary:
        folder = Path(temporary) / EXPORT_FOLDER
        exported = export_run(
            run_dir,
            folder,
            checkpoint,
            eval_result=eval_result,
            evaluate=evaluate,
            seed=seed,
            repo_id=repo_id,
            license=license,
            language=language,
        )
        files = exported["files"]
        result = {
            "repo_id": repo_id,
            "endpoint": endpoint,
            "private": private,
            "checkpoint": exported["checkpoint"],
            "files": files,
            "total_bytes": sum(files.values()),
            "dry_run": dry_run,
            "url": None,
            "card": (folder / "README.md").read_text(encoding="utf-8"),
        }
        if api is None:
            return result
        echo(
            f"Uploading {len(files)} files ({result['total_bytes']:,} bytes) of {run_dir} checkpoint {exported['checkpoint']} to {repo_id} ..."
        )
        try:
            # Without --private the Hub's default for the owner applies; an existing repository keeps its visibility.
            repo = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
            api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                repo_type="model",
                commit_message=f"gptlab export of checkpoint {exported['checkpoint']}",
            )
        except _network_errors() as error:
            raise _hub_error(error, endpoint, repo_id, token) from None
        result["url"] = str(repo)
    return result
