"""`python -m agent_image.container.secrets_in [PATH]`: the control plane's way to hand an incarnation its secrets.

Run through the Docker API as `exec` in the running container (as its own user, 10001), with the `AgentSecrets`
JSON on stdin as one line (`AgentSecrets.to_json() + "\n"`; EOF also ends it); PATH defaults to
`$LITEFLEET_SECRETS_FILE`. It validates the document (the same `AgentSecrets.parse` the agent uses), then writes it
atomically (temporary file in the same directory, mode 0400, fsync, rename), so the waiting entrypoint never reads
half a file. Running it twice with the same document is harmless: the second
run replaces the file with identical bytes.

Exit codes: 0 written; 2 the document is invalid (one line on stderr naming the field, never a value);
3 it could not be written (one line: the path and the OS error).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from agent_image import contract
from agent_image.contract import AgentSecrets, IdentityError


def write_secrets(secrets: AgentSecrets, path: Path) -> None:
    """Write `secrets` to `path` atomically with mode 0400 (its directory is created 0700 if missing)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.to_json())
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o400)  # whatever the umask made of it
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else os.environ.get(contract.SECRETS_FILE, contract.DEFAULT_SECRETS_FILE))
    # One line (AgentSecrets.to_json() has no newline) or everything up to EOF: the caller need not half-close
    # the exec's stdin, which a TLS connection to the engine cannot do.
    raw = sys.stdin.buffer.readline(contract.MAX_SECRETS_BYTES + 1)
    try:
        secrets = AgentSecrets.parse(raw)
    except IdentityError as exc:
        print(f"secrets_in: invalid: {exc}", file=sys.stderr)
        return 2
    try:
        write_secrets(secrets, path)
    except OSError as exc:
        print(f"secrets_in: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
