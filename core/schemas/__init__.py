"""JSON Schemas the project checks messages against (package data, read at run time)."""
