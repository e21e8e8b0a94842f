"""ecpds.workers."""
