"""What runs inside a tenant's agent container besides the server: the identity read from the environment
(`agent_image.contract` defines it), the entrypoint (restore, then `litestream replicate -exec`), generation
fencing (`fence`), replication reporting and the proven final sync (`replication`), and the Litestream and S3
clients they use."""
