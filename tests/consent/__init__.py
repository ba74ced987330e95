"""Tests of the consent kernel."""
