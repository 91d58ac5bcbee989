"""The project's exceptions. Each message says what happened and what to do next."""

from __future__ import annotations


class StepstreamError(Exception):
    """Base class of every error stepstream raises on purpose.

    `exit_code` is what the CLI exits with (README, "CLI exit codes").
    """

    exit_code = 1


class ConfigError(StepstreamError):
    """A setting, flag or configuration file is invalid."""


class ContractError(StepstreamError):
    """Bytes on a topic do not decode to the wire contract.

    `reason` is a short machine-friendly tag (``undecodable``, ``schema``, ``version``)
    used as the dead-letter reason; the message holds the details.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StackError(StepstreamError):
    """The embedded stack could not be started, found or stopped."""


class BinaryNotFoundError(StackError):
    """A server binary (tansu, valkey-server, redis-server) is not installed."""


class PortInUseError(StackError):
    """A loopback port the stack wants is already taken by another process."""


class StackNotRunningError(StackError):
    """A command needs the local stack, but no running stack was found."""

    exit_code = 3


class ServiceError(StepstreamError):
    """Redis or Kafka could not be used. `service` names which; the message says what to
    check. Subclasses tell unreachable, refused credentials and TLS failures apart."""

    exit_code = 4

    def __init__(self, service: str, message: str) -> None:
        super().__init__(message)
        self.service = service


class ServiceUnreachableError(ServiceError):
    """Nothing answers at the configured address (closed port, wrong host, timeout)."""

    exit_code = 4


class ServiceAuthError(ServiceError):
    """The server refused the credentials, or the user lacks a permission."""

    exit_code = 5


class ServiceTlsError(ServiceError):
    """The TLS handshake failed: no TLS on one side, an unknown CA, a host-name mismatch."""

    exit_code = 6


class TopicMismatchError(StepstreamError):
    """A topic exists with a partition count other than the configured one."""


class FaustInternalsError(StepstreamError):
    """The installed faust-streaming or aiokafka lacks an internal stepstream's workers
    rely on (`stepstream.faust_seam.INTERNALS`): an upgrade changed them. The message
    names what is missing and the versions to pin."""


class MissingExtraError(StepstreamError, ImportError):
    """An optional part of stepstream needs a package that is not installed; the message
    names the extra that installs it."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(
            f"{what} is not installed: pip install 'stepstream[{extra}]' (or install {what})"
        )
        self.extra = extra
