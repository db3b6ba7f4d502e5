"""The admin portal: audit an institution's shares, revoke them, resend their mail."""
