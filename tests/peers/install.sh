#!/usr/bin/env bash
# Installs the real servers and client tools that tests and benchmarks talk to.
# Each missing piece is installed from the distribution's packages; a test whose
# peer still cannot be found skips with the reason.
set -u
need=()
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v sftp >/dev/null || need+=(openssh-client)
command -v rclone >/dev/null || need+=(rclone)
command -v curl >/dev/null || need+=(curl)
command -v lftp >/dev/null || need+=(lftp)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_dav_ext_module.so ] || need+=(libnginx-mod-http-dav-ext)
command -v lbzip2 >/dev/null || need+=(lbzip2)
command -v vsftpd >/dev/null || [ -x /usr/sbin/vsftpd ] || need+=(vsftpd)
command -v openssl >/dev/null || need+=(openssl)
command -v npm >/dev/null || need+=(nodejs npm)
command -v chromium >/dev/null || need+=(chromium)  # the console's browser tests
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null 2>&1 \
        || echo "could not install ${need[*]}; tests that need them will say so"
fi
# Azurite (the Azure Blob emulator) comes from npm, into a folder of its own.
if [ ! -x /opt/ecpds-peers/node_modules/.bin/azurite-blob ] && command -v npm >/dev/null; then
    echo "installing azurite"
    (mkdir -p /opt/ecpds-peers && npm install --prefix /opt/ecpds-peers --no-audit --no-fund azurite@3) \
        >/dev/null 2>&1 || echo "could not install azurite; Azure tests will say so"
fi
exit 0
