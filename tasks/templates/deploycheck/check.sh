#!/bin/sh
# Check that the deployment config is complete.
if [ ! -f config.ini ]; then
  echo "error: config.ini not found" >&2
  exit 2
fi
for key in host port; do
  if ! grep -q "^$key=" config.ini; then
    echo "error: missing key '$key' in config.ini" >&2
    exit 3
  fi
done
echo "config ok: $(wc -l < config.ini) keys"
