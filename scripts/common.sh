# Helpers shared by the measurement scripts; source it after `cd` to the
# repository root.

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (up to 10 s) until something listens on port $1.
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; return 1
}

# Makes a writable copy of the uWebSockets.js reference server in $UWS_DIR
# and installs it, once.
setup_uws() {
  if [ ! -d "$UWS_DIR/node_modules" ]; then
    mkdir -p "$UWS_DIR"
    cp -r ../shared/peers/uws/. "$UWS_DIR/"
    chmod -R u+w "$UWS_DIR"
    bash "$UWS_DIR/setup.sh"
  fi
}

# Instructions (Ir) callgrind counts for one run of the command in "$@":
# the count repeats exactly where times do not.
callgrind_count() {
  command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; return 1; }
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 |
    awk '/Collected :/ { print $NF }'
}
