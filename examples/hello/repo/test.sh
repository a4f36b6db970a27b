#!/bin/sh
# The example's test suite: greet.sh must greet kiln.
want="Hello, kiln!"
got=$(sh greet.sh)
if [ "$got" = "$want" ]; then
  echo "PASS greet: $got"
  exit 0
fi
echo "FAIL greet: got '$got'"
echo "EXPECTED_GREETING=$want"
exit 1
