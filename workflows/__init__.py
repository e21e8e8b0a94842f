"""ecpds.workflows."""
