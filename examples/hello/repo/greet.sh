#!/bin/sh
# Prints the greeting.
echo "Hello, world!"
