<?php
// "USER COUNT" from the session Apache decrypted (SessionEnv: HTTP_SESSION), else "anonymous".
header('Content-Type: text/plain');
header('Cache-Control: no-store');
parse_str($_SERVER['HTTP_SESSION'] ?? '', $session);
if (!isset($session['user']) || !is_string($session['user'])) {
    exit("anonymous\n");
}
$count = (int)($session['count'] ?? 0) + 1;
header('X-Replace-Session: ' . http_build_query(['user' => $session['user'], 'count' => $count]));
echo $session['user'], ' ', $count, "\n";
