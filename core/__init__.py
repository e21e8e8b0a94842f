"""ecpds.core."""
