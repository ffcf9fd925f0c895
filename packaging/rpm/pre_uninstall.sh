# %systemd_preun: on erase ($1 = 0), stop and disable both units; then put Docker back as it
# was (see packaging/debian/prerm: nothing would renew the certificates once the package is
# gone), whenever any of our files is left. The CA and the certificates are kept.
# Upgrade ($1 >= 1): nothing; %postun try-restarts the service.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now docker-tls-manager.service docker-tls-manager-prepare.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ] && { [ -e /etc/systemd/system/docker-tcp.socket ] || [ -e /etc/systemd/system/docker.service.d/docker-tls-manager.conf ] || [ -e /etc/systemd/system/docker-tls-manager-guard.service ] || [ -e /var/lib/docker-tls-manager/docker-owned.json ] || [ -e /etc/systemd/system/docker-tls-manager-authz.socket ]; }; then
        if out=$(docker-tls-manager deconfigure 2>&1); then
            case $out in
                *deferred*) echo "docker-tls-manager: containers run without live-restore, so Docker was not restarted: the running dockerd keeps serving port 2376 with mutual TLS until it restarts; no later start of Docker gets the port. CA and certificates kept" >&2 ;;
                *) echo "docker-tls-manager: Docker's TCP port closed (deconfigure); CA and certificates kept in /var/lib/docker-tls-manager and /etc/docker/tls" >&2 ;;
            esac
        else
            echo "docker-tls-manager: deconfigure failed ($(echo "$out" | tail -n 1)); Docker's TCP port closes at its next restart" >&2
            # Never leave Docker asking an authorization plugin whose binary is going away.
            systemctl start docker-tls-manager-authz-fallback.service >/dev/null 2>&1 || true
        fi
        # Removing the package is not `deconfigure`: a reinstalled and enabled service
        # configures Docker again.
        rm -f /var/lib/docker-tls-manager/deconfigured
    fi
fi
