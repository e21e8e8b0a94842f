"""ecpds.cli."""
