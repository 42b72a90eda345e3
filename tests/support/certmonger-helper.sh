#!/usr/bin/env bash
# A certmonger-style CA helper for firmad's renewal tests, issuing from a test CA.
#
#   CERTMONGER_OPERATION=SUBMIT CERTMONGER_CSR="$(cat req.pem)" certmonger-helper.sh CA_DIR
#
# CA_DIR holds ca.pem and ca.key. State lives in CA_DIR/helper/: pending/
# (cookies), issued/, last-csr.pem, last-certificate.pem (the request's
# CERTMONGER_CERTIFICATE), calls.log ("OPERATION EXIT" per invocation) and
# control, whose whitespace-separated words choose the behaviour (re-read on
# every call):
#   wait             SUBMIT exits 1 with a cookie; a POLL with it issues
#   retry=N          SUBMIT exits 5 printing N, a newline, a cookie
#   reject           exit 2 with a message        unreachable     exit 3
#   underconfigured  exit 4                       hang            sleep 120
#   huge             20 MiB on stdout, exit 0     garbage         random text, exit 0
#   wrong_key        the certificate carries a fresh, unrelated key
#   expired          the certificate's validity ended yesterday
#   untrusted        issued by a fresh CA with the real CA's name
# Exit codes follow certmonger's contract: 0 issued (PEM on stdout), 1 wait
# (cookie), 2 rejected, 3 unreachable, 4 underconfigured, 5 wait N seconds,
# 6 unsupported operation. IDENTIFY prints one line; FETCH-ROOTS prints a
# nickname line and the CA certificate in PEM.
set -uo pipefail

ca_dir=${1:-}
state=$ca_dir/helper
op=${CERTMONGER_OPERATION:-}
code=0

if [ -z "$ca_dir" ] || [ ! -r "$ca_dir/ca.pem" ] || [ ! -r "$ca_dir/ca.key" ]; then
  echo "usage: certmonger-helper.sh CA_DIR (with ca.pem and ca.key); got '${ca_dir}'"
  exit 4
fi
mkdir -p "$state/pending" "$state/issued" || exit 4
work=$(mktemp -d "$state/work.XXXXXX") || exit 4
sleeper=

finish() {
  [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null
  # A cookie lives until its request is issued or rejected; other failures may be retried.
  if [ "$op" = POLL ] && { [ "$code" = 0 ] || [ "$code" = 2 ]; }; then rm -f "$state/pending/${cookie:-none}.pem"; fi
  rm -rf "$work"
  echo "${op:-none} $code" >> "$state/calls.log"
}
trap 'finish' EXIT
trap 'code=143; exit 143' TERM
trap 'code=130; exit 130' INT

# done_with CODE: exits with CODE, logged by the EXIT trap.
done_with() { code=$1; exit "$1"; }

words=$(cat "$state/control" 2>/dev/null || true)
has() { [[ " $(echo $words) " == *" $1 "* ]]; }
value_of() {  # value_of NAME: the N of a NAME=N word, or nothing
  local w
  for w in $words; do [[ $w == "$1="* ]] && { echo "${w#*=}"; return; }; done
}

q() { "$@" 2>>"$state/errors.log"; }

# 16 hex digits, the first non-zero: openssl prints the serial back unchanged.
serial() { printf '%X%s' $((RANDOM % 7 + 1)) "$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F | cut -c1-15)"; }

ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,nonRepudiation"

# The CA that signs: the real one, or for `untrusted` an impostor with its exact name.
signer() {
  if has untrusted; then
    q openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/impostor.key" &&
      q openssl x509 -x509toreq -in "$ca_dir/ca.pem" -signkey "$work/impostor.key" -out "$work/impostor.csr" &&
      q openssl x509 -req -in "$work/impostor.csr" -signkey "$work/impostor.key" -days 3650 \
        -extfile <(printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n') \
        -out "$work/impostor.pem" || return 1
    echo "$work/impostor.pem $work/impostor.key"
  else
    echo "$ca_dir/ca.pem $ca_dir/ca.key"
  fi
}

# issue CSR_PEM_FILE: prints the certificate PEM; the mode words decide what it is.
issue() {
  local csr=$1 sn ca key
  sn=$(serial)
  read -r ca key < <(signer) || return 1
  [ -n "$ca" ] || return 1
  if has expired; then
    # openssl x509 in OpenSSL 3.0 cannot set a start date; openssl ca can.
    mkdir -p "$work/db" && : > "$work/db/index.txt" && echo "$sn" > "$work/db/serial"
    cat > "$work/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $work/db/index.txt
new_certs_dir = $work/db
serial = $work/db/serial
default_md = sha256
policy = anything
unique_subject = no
email_in_dn = no
[anything]
[leaf]
$ext
CNF
    q openssl ca -batch -config "$work/ca.cnf" -cert "$ca" -keyfile "$key" -in "$csr" \
      -startdate "$(date -u -d '-30 days' +%Y%m%d%H%M%SZ)" -enddate "$(date -u -d '-1 day' +%Y%m%d%H%M%SZ)" \
      -extensions leaf -preserveDN -notext -out "$work/cert.pem" || return 1
  else
    local force=()
    if has wrong_key; then
      q openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/other.key" &&
        q openssl pkey -in "$work/other.key" -pubout -out "$work/other.pub" || return 1
      force=(-force_pubkey "$work/other.pub")
    fi
    q openssl x509 -req -in "$csr" -CA "$ca" -CAkey "$key" -days 365 -set_serial "0x$sn" \
      -extfile <(echo "$ext") "${force[@]}" -out "$work/cert.pem" || return 1
  fi
  cp "$work/cert.pem" "$state/issued/$sn.pem"
  cat "$work/cert.pem"
}

# answer CSR_PEM_FILE: the modes that replace or refuse the answer, else a certificate.
answer() {
  if has reject; then echo "request rejected by the test CA (control word 'reject')"; done_with 2; fi
  if has unreachable; then echo "cannot reach the test CA (control word 'unreachable')"; done_with 3; fi
  if has underconfigured; then echo "the test CA helper is not configured (control word 'underconfigured')"; done_with 4; fi
  if has hang; then
    # In the background with its output elsewhere, so a TERM ends us at once
    # and an orphaned sleep never holds the caller's pipe open.
    sleep 120 </dev/null >/dev/null 2>&1 &
    sleeper=$!
    wait "$sleeper"
    done_with 0
  fi
  if has huge; then
    head -c $((20 << 20)) /dev/zero | tr '\0' 'A'
    done_with 0
  fi
  if has garbage; then
    printf 'G'; head -c 2048 /dev/urandom | base64 -w 64
    done_with 0
  fi
  issue "$1" || { echo "the test CA could not issue: $(tail -n 3 "$state/errors.log" 2>/dev/null)"; done_with 3; }
  done_with 0
}

# Saves CERTMONGER_CSR for issuing; refuses (exit 2) one that is not a valid request.
take_csr() {
  printf '%s\n' "${CERTMONGER_CSR:-}" > "$1"
  cp "$1" "$state/last-csr.pem"
  printf '%s\n' "${CERTMONGER_CERTIFICATE:-}" > "$state/last-certificate.pem"
  # OpenSSL 3.0 exits 0 even when the signature is bad: its message tells.
  local said
  said=$(openssl req -in "$1" -verify -noout 2>&1)
  if [ $? -ne 0 ] || [[ $said != *"verify OK"* ]]; then
    echo "CERTMONGER_CSR is not a valid certificate request"
    done_with 2
  fi
}

new_cookie() { od -An -N8 -tx1 /dev/urandom | tr -d ' \n'; }

case "$op" in
  SUBMIT)
    take_csr "$work/req.pem"
    retry=$(value_of retry)
    if has wait || [ -n "$retry" ]; then
      cookie=$(new_cookie)
      cp "$work/req.pem" "$state/pending/$cookie.pem"
      if [ -n "$retry" ]; then printf '%s\n%s\n' "$retry" "$cookie"; done_with 5; fi
      echo "$cookie"
      done_with 1
    fi
    answer "$work/req.pem"
    ;;
  POLL)
    cookie=${CERTMONGER_CA_COOKIE:-}
    if [[ ! $cookie =~ ^[0-9a-f]{16}$ ]] || [ ! -f "$state/pending/$cookie.pem" ]; then
      echo "unknown CA cookie '$cookie'"
      done_with 2
    fi
    cp "$state/pending/$cookie.pem" "$work/req.pem"
    answer "$work/req.pem"
    ;;
  IDENTIFY)
    echo "firmad test CA helper 1.0"
    done_with 0
    ;;
  FETCH-ROOTS)
    echo "firmad Test CA"
    cat "$ca_dir/ca.pem"
    done_with 0
    ;;
  *)
    done_with 6
    ;;
esac
