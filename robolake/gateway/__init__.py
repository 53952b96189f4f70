"""The front door: the ingestion gateway (FastAPI), its API keys and tokens, the broker it
publishes readings to, the stream writer that turns them into MCAP files in the landing
zone, and the platform API that asks Dagster (over GraphQL HTTP) for builds and training.

Nothing here imports dagster: the gateway runs in its own small image.
"""
