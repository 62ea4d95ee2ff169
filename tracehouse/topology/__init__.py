"""topology: see DESIGN.md §3 (not built yet)."""
