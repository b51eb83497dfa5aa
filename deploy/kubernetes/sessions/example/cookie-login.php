<?php
// The same login kept by Apache itself (mod_session_crypto, carp-cookie-sessions.conf): the
// session is an encrypted cookie the client carries, so there is nothing to replicate. PHP hands
// Apache the new session in a response header and never sees the key.
header('Content-Type: text/plain');
header('Cache-Control: no-store');
$user = $_REQUEST['user'] ?? '';
if (!is_string($user) || !preg_match('/^[A-Za-z0-9_.-]{1,64}$/', $user)) {
    http_response_code(400);
    exit("usage: login.php?user=NAME (letters, digits, _ . -)\n");
}
header('X-Replace-Session: ' . http_build_query(['user' => $user, 'count' => 0]));
echo "logged in: $user\n";
