"""`robolake gateway`: the API under uvicorn and, on the embedded default, the broker."""

from __future__ import annotations

import os

from robolake.gateway.config import GatewaySettings


def serve(host: str = "127.0.0.1", port: int = 8080, workers: int = 1) -> None:
    import uvicorn

    from robolake.gateway.app import create_app

    settings = GatewaySettings.from_env()
    broker = None
    if settings.broker_url is None and os.environ.get("ROBOLAKE_BROKER", "embedded") != "none":
        from robolake.gateway.broker import EmbeddedNats

        broker_port = int(os.environ.get("ROBOLAKE_BROKER_PORT", "4222"))
        if not _port_free(broker_port):  # another broker on this machine: take any port
            broker_port = 0
        broker = EmbeddedNats(settings.state / "nats", port=broker_port or None)
        settings.broker_url = broker.start()
        # where `robolake stream-writer` finds the embedded broker
        (settings.state / "broker.url").write_text(settings.broker_url + "\n")
        print(f"broker: embedded NATS JetStream at {settings.broker_url} "
              f"(storage {broker.store_dir})", flush=True)
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info",
                    proxy_headers=True, timeout_graceful_shutdown=10)
    finally:
        if broker is not None:
            broker.stop()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
