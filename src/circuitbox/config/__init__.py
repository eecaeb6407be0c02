"""The config file: loading (`load`), the strict model (`model`), `${VAR}` expansion (`expand`) and the effective
policy of every (server, tool) with the source of each value (`policy`). Nothing here imports `mcp`."""
