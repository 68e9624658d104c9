"""The litefleet control plane: the API (`api`) over services (`services`) that queue operations, run by the
reconciler (`reconciler`) through the fleet's hands (`fleet`) on drivers (`drivers`) and object storage
(`storage`); `app` composes it all, `cli` is the command line. See ARCHITECTURE.md."""
