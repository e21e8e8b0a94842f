"""ecpds.activities."""
