"""Tests of ecpds.core."""
