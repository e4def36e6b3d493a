# Sourced by ohif/install.sh and scripts/install_api_docs.sh: fetch one pinned npm package's tarball, check it
# against its registry integrity (sha512), and unpack it.
#   npm_pack_checked SPEC TARBALL INTEGRITY DIR   ->  DIR/package/ (exits non-zero on any failure)
npm_pack_checked() {
  local spec=$1 tarball=$2 integrity=$3 dir=$4 got
  (cd "$dir" && npm pack --silent "$spec" >/dev/null)
  got=$(python3 -c 'import base64, hashlib, sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$dir/$tarball")
  if [ "$got" != "$integrity" ]; then
    echo "error: $spec tarball integrity $got is not the pinned $integrity" >&2
    exit 1
  fi
  tar -xzf "$dir/$tarball" -C "$dir"
}
