# Sourced by the token-making scripts (make-token.sh, make-tpm2-token.sh):
# the test CA that certifies their keys, and the part of firmad.toml that
# does not depend on the token.
# make_test_ca DIR: DIR/ca/ca.pem and ca.key (a CA for ten years) and
# DIR/work/ext.cnf, the extensions of the end-entity certificates it issues
# (as SAT's: digital signature and non-repudiation). DIR/ca and DIR/work exist.
make_test_ca() {
  local dir=$1
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/ca/ca.key" -out "$dir/ca/ca.pem" -days 3650 \
    -subj "/C=MX/O=firmad test CA/CN=firmad Test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  cat > "$dir/work/ext.cnf" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,nonRepudiation
EXT
}

# firmad_toml_head DIR: the [daemon] and [access] tables of a configuration
# serving DIR/run/firmad.sock, with its state, audit trail and log level
# ($FIRMAD_LOG_LEVEL, default info); the caller is the administrator.
firmad_toml_head() {
  local dir=$1
  cat <<TOML
[daemon]
socket = "$dir/run/firmad.sock"
state_directory = "$dir/state"
audit_file = "$dir/audit.log"
log_level = "${FIRMAD_LOG_LEVEL:-info}"

[access]
admin_users = [$(id -u)]
TOML
}
