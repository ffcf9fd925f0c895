# %systemd_postun_with_restart: reload; on upgrade ($1 >= 1), restart the service only if it
# was running (try-restart). Erase: the certificates are kept (see %preun).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
    systemctl try-restart docker-tls-manager.service >/dev/null 2>&1 || :
fi
