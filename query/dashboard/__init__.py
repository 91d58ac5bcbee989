"""The web dashboard: runs page, run page with charts, alerts and the rank grid, live."""
