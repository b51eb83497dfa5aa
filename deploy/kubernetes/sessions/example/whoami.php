<?php
// "USER COUNT" for a logged-in session (COUNT: its visits to this page, a write per visit), else
// "anonymous". A visitor without a session cookie gets no session (no file per health check).
header('Content-Type: text/plain');
header('Cache-Control: no-store');
if (!isset($_COOKIE[session_name()])) {
    exit("anonymous\n");
}
session_start();
if (!isset($_SESSION['user'])) {
    session_destroy();  // an unknown or expired id: leave no empty session file behind
    exit("anonymous\n");
}
$_SESSION['count'] = ($_SESSION['count'] ?? 0) + 1;
echo $_SESSION['user'], ' ', $_SESSION['count'], "\n";
