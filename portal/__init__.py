"""ecpds.portal."""
