"""Publish one batchgate job message to RabbitMQ with pika.

The script is an outside client of the job-message contract. It relies only on
the README section "The job message contract" and schema/job-message.v1.json,
and publishes the way `batchgate submit` does, with publisher confirms. It does
not check the input lines, because the scheduler validates them and rejects an
invalid job with a `job.rejected` event.

Exit codes follow `batchgate`: 0 once the broker confirmed the message, 2 when
the arguments or the message are invalid (nothing was published), 1 for any
other failure.
"""

import argparse
import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

try:
    import pika
    import pika.exceptions
except ImportError:
    sys.exit(
        "error: the pika package is not installed. "
        "Install it with `python3 -m pip install pika`."
    )

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schema" / "job-message.v1.json"
ROUTING_KEY = "job.submitted"
ENDPOINTS = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/completions",
]
EXIT_FAILURE = 1
EXIT_INVALID = 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Publish one batchgate job to RabbitMQ."
    )
    parser.add_argument(
        "--amqp-url",
        required=True,
        help="broker URL with the vhost, for example "
        "amqp://USER:PASSWORD@HOST:5672/VHOST",
    )
    parser.add_argument(
        "--prefix",
        required=True,
        help="exchange-name prefix (broker.prefix); the job goes to the exchange "
        "PREFIX.jobs",
    )

    parser.add_argument(
        "--job-id",
        required=True,
        help="job id and idempotency key: 1 to 64 characters from "
        "A-Z a-z 0-9 . _ -, starting with a letter or digit",
    )
    parser.add_argument(
        "--team", required=True, help="owner team, as configured in batchgate"
    )
    parser.add_argument(
        "--cost-center", required=True, help="the owner team's configured cost center"
    )
    parser.add_argument(
        "--workload-class",
        required=True,
        help="workload class, for example eval, enrichment or embedding_backfill",
    )

    parser.add_argument(
        "--input",
        required=True,
        type=Path,
        help="JSONL input file, optionally gzip-compressed",
    )
    parser.add_argument(
        "--endpoint",
        default="/v1/chat/completions",
        choices=ENDPOINTS,
        help="OpenAI batch endpoint that every input line uses (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        default="gpt-6-luna",
        help="model that every input line uses; must be in the price table "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--purpose",
        default="Job-contract check published by tests/python/publish_job.py",
        help="why the job runs, at most 512 characters (default: %(default)r)",
    )
    return parser.parse_args()


def sha256_hex(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_message(args: argparse.Namespace, input_path: Path) -> dict:
    """Build a schema-version-1 job message, hashing the input file at input_path.

    input_path must be absolute, because the URI must be an absolute file:// URI.
    """
    return {
        "schema_version": 1,
        "manifest": {
            "job_id": args.job_id,
            "owner_team": args.team,
            "cost_center": args.cost_center,
            "workload_class": args.workload_class,
            "purpose": args.purpose,
            "provider": "openai",
            "endpoint": args.endpoint,
            "model": args.model,
            "completion_window": "24h",
        },
        "input": {
            # NOTE: as_uri() percent-encodes spaces and non-ASCII characters. The
            # README does not say whether batchgate decodes them, so prefer plain
            # ASCII paths.
            "uri": input_path.as_uri(),
            "sha256": sha256_hex(input_path),
        },
        "submitted_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def schema_errors(message: dict) -> list[str]:
    """Validate the message against the job-message JSON Schema and return the problems.

    Returns no problems when the jsonschema package is not installed, because the
    check is optional.
    """
    try:
        import jsonschema
    except ImportError:
        return []
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    format_checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    validator = jsonschema.Draft202012Validator(schema, format_checker=format_checker)
    errors = sorted(validator.iter_errors(message), key=lambda e: list(e.absolute_path))
    problems = []
    for error in errors:
        location = "/".join(str(part) for part in error.absolute_path) or "(message)"
        problems.append(f"{location}: {error.message}")
    return problems


def redact_url(url: str) -> str:
    """Return the URL with its password replaced by ***, for use in error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user_info, _, host = parts.netloc.rpartition("@")
    user = user_info.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connection_parameters(amqp_url: str) -> pika.URLParameters:
    """Parse an amqp:// or amqps:// URL into pika connection parameters.

    Raises ValueError when the URL is invalid.
    """
    if urlsplit(amqp_url).scheme not in ("amqp", "amqps"):
        raise ValueError("the scheme must be amqp or amqps")
    try:
        parameters = pika.URLParameters(amqp_url)
    except IndexError as error:
        raise ValueError(str(error)) from error
    if parameters.blocked_connection_timeout is None:
        # Fail instead of waiting forever while a resource alarm blocks publishers.
        parameters.blocked_connection_timeout = 60
    return parameters


def publish(
    parameters: pika.URLParameters, exchange: str, job_id: str, body: bytes
) -> None:
    """Publish the body as a mandatory, persistent message and wait for the confirm.

    Raises pika.exceptions.UnroutableError, NackError or another AMQPError when
    the broker returns or rejects the message, or the connection fails.
    """
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=job_id,
            # The scheduler authorises by this property, and the broker rejects
            # a user_id other than the user of this connection.
            user_id=parameters.credentials.username,
        )
        channel.basic_publish(exchange, ROUTING_KEY, body, properties, mandatory=True)
    finally:
        if connection.is_open:
            connection.close()


def describe_publish_error(
    error: Exception, url: str, exchange: str, job_id: str
) -> str:
    """Build the error message for a failed publish, with what to do next."""
    if isinstance(error, pika.exceptions.UnroutableError):
        return (
            f"the broker at {url} returned job {job_id} as unroutable, because no "
            f"queue is bound to exchange {exchange} with routing key {ROUTING_KEY}. "
            "Start a batchgate scheduler or worker with the same prefix and vhost, "
            "then publish again."
        )
    if isinstance(error, pika.exceptions.NackError):
        return (
            f"the broker at {url} rejected (nacked) job {job_id}, so it was not "
            "stored. Check the broker log and the limits of the queues bound to the "
            "exchange, then publish again."
        )
    if isinstance(error, pika.exceptions.ChannelClosedByBroker):
        # In AMQP 0-9-1 a missing exchange closes the channel with 404 NOT_FOUND,
        # because the mandatory flag only reports messages that reach no queue.
        return (
            f"the broker at {url} closed the channel while publishing to exchange "
            f"{exchange} ({error.reply_code} {error.reply_text}). Check --prefix and "
            "the vhost in the URL, and start a batchgate scheduler or worker to "
            "declare the exchanges and queues."
        )
    return (
        f"failed to publish to the broker at {url} ({error!r}). Check that RabbitMQ "
        "is running and that the URL and credentials are correct."
    )


def main() -> int:
    args = parse_args()
    url = redact_url(args.amqp_url)
    try:
        parameters = connection_parameters(args.amqp_url)
    except ValueError as error:
        print(f"error: invalid --amqp-url {url}: {error}", file=sys.stderr)
        return EXIT_INVALID

    input_path = args.input.resolve()
    if not input_path.is_file():
        print(
            f"error: input file {input_path} not found or not a regular file",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        message = build_message(args, input_path)
    except OSError as error:
        print(
            f"error: failed to read input file {input_path}: {error}", file=sys.stderr
        )
        return EXIT_INVALID

    problems = schema_errors(message)
    if problems:
        print(
            f"error: the job message does not match {SCHEMA_PATH.name}, "
            "so nothing was published:",
            file=sys.stderr,
        )
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID

    exchange = f"{args.prefix}.jobs"
    body = json.dumps(message).encode("utf-8")
    try:
        publish(parameters, exchange, args.job_id, body)
    except pika.exceptions.AMQPError as error:
        reason = describe_publish_error(error, url, exchange, args.job_id)
        print(f"error: {reason}", file=sys.stderr)
        return EXIT_FAILURE

    print(args.job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
