<?php
// carp-sidecar's session example, PHP file sessions: login.php?user=NAME (GET or POST) logs NAME
// in. The session is a file under session.save_path (carp-sessions.conf), a replicated path: it
// is on the backups once replicated, so a failover keeps the user logged in.
header('Content-Type: text/plain');
header('Cache-Control: no-store');
$user = $_REQUEST['user'] ?? '';
if (!is_string($user) || !preg_match('/^[A-Za-z0-9_.-]{1,64}$/', $user)) {
    http_response_code(400);
    exit("usage: login.php?user=NAME (letters, digits, _ . -)\n");
}
session_start();
session_regenerate_id(true);  // a new id at login: a planted id never becomes a logged-in one
$_SESSION['user'] = $user;
$_SESSION['count'] = 0;
echo "logged in: $user\n";
