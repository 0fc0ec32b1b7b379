#!/usr/bin/env bash
# Debian packages the tests and the default suite use: Chromium (browser test) and
# Fashion-MNIST (folded into the offline 'digits' suite). Installed only when missing;
# without root we say what is missing and carry on (the browser test then explains itself).
set -u
need=()
[ -x /usr/bin/chromium ] || need+=(chromium fonts-dejavu-core)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    echo "note: missing Debian packages (${need[*]}); install them with: sudo apt-get install ${need[*]}" >&2
fi
