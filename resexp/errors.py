"""The errors users see: ResexpError and its kinds, and `explain`, which turns any error that
ends a command into an exit code and one line (the CLI prints it as `resexp: error: ...`)."""

import errno


class ResexpError(Exception):
    """Bad input or missing resource, with a message that says what to do."""


class ConfigError(ResexpError):
    """A config value or override that cannot be used."""


class DataError(ResexpError):
    """A dataset that is missing, corrupt or unreadable."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line: its first non-empty line, else its type's name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# OS errors a user can fix, by errno, as the start of the one-line message.
OS_PROBLEMS = {
    errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted", errno.EROFS: "read-only file system", errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory", errno.ENOENT: "no such file or directory", errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
}
EXIT_INPUT = 2  # bad input, missing or corrupt files, OS errors: the user can act on it
EXIT_BUG = 1  # anything else: a bug in resexp, reported with --debug's traceback
EXIT_INTERRUPTED = 130


def explain(error: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for an error that ends a command."""
    if isinstance(error, ResexpError):
        return EXIT_INPUT, one_line(error)
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, one_line(error) if str(error) else "interrupted"
    if isinstance(error, OSError) and error.errno is not None:
        problem = OS_PROBLEMS.get(error.errno, error.strerror or type(error).__name__)
        where = ", ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
        return EXIT_INPUT, f"{problem}: {where}" if where else problem
    return EXIT_BUG, (f"internal error ({type(error).__name__}: {one_line(error)}); run again with --debug "
                      "(or RESEXP_DEBUG=1) for the traceback, and please report it")
