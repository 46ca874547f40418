#!/usr/bin/env bash
# The report test renders report.html in headless Chromium. Install Debian's chromium when we can;
# say so plainly when we cannot (the test then skips with the same reason).
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "make test: installing Debian's chromium for the report rendering test"
  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
    && exit 0
fi
echo "make test: chromium is not installed and could not be installed; the report rendering test will be skipped"
exit 1
