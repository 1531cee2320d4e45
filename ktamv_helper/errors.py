"""The one exception type the helper's methods raise for expected failures."""


class HelperError(Exception):
    """A failure with a protocol error code and a sentence for the user.

    Parameters
    ----------
    code : str
        One of the codes in ``docs/protocol.md`` (``camera_timeout``,
        ``nozzle_not_found``, ...).
    message : str
        A complete sentence a printer owner can act on.
    details : dict, optional
        Machine-readable context sent as ``error.details``.
    """

    def __init__(self, code, message, details=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details or {})

    def to_json(self):
        """Return the protocol's ``error`` object."""
        error = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return error
